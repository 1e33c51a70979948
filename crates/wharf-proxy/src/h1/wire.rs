//! The HTTP/1.1 engine's wire format: request and response heads parsed once
//! (httparse) into offsets into the connection's buffer, the rewritten heads
//! written straight into an output buffer, and the chunked coding.
//!
//! Everything here is synchronous and allocation-free on the common path, so
//! it can be tested and fuzzed on its own (`fuzz/fuzz_targets/h1_wire.rs`).
//!
//! The request side accepts only what the engine serves (docs/architecture.md,
//! "Two HTTP/1.1 paths"); anything else is [`Parse::Decline`], and the
//! connection goes to hyper with the bytes untouched, so hyper answers or
//! refuses it exactly as it always did.

use std::mem::MaybeUninit;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::headers::ClientInfo;

/// Fields parsed per head at most; a head with more goes to hyper (request)
/// or is a 502 (response).
pub(crate) const MAX_FIELDS: usize = 128;

/// A response head from a backend longer than this is a 502.
pub(crate) const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A chunk-size line (with extensions) or a trailer section longer than this
/// is malformed.
const MAX_CHUNK_LINE: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// What a field name means to the engine; `Other` for every end-to-end field
/// it passes through untouched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Other,
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// Hop-by-hop fields removed on the way through (RFC 9110 §7.6.1, and
    /// the older names clients still send).
    HopByHop,
    Upgrade,
    Te,
    Expect,
    Http2Settings,
    XForwardedFor,
    XForwardedProto,
    XForwardedHost,
    XRealIp,
    /// Forwarding fields only a trusted peer may set (`headers::UNTRUSTED_DROP`),
    /// and their `_` spellings.
    Untrusted,
    UserAgent,
    Referer,
    Date,
    Hsts,
}

/// Lower-case names and their kinds. Matched case-insensitively among the
/// names of the same length ([`BY_LEN`]): a field costs one to three compares.
const NAMES: [(&[u8], Kind); 32] = [
    (b"host", Kind::Host),
    (b"content-length", Kind::ContentLength),
    (b"transfer-encoding", Kind::TransferEncoding),
    (b"connection", Kind::Connection),
    (b"keep-alive", Kind::HopByHop),
    (b"proxy-connection", Kind::HopByHop),
    (b"proxy-authenticate", Kind::HopByHop),
    (b"proxy-authorization", Kind::HopByHop),
    (b"upgrade", Kind::Upgrade),
    (b"te", Kind::Te),
    (b"expect", Kind::Expect),
    (b"http2-settings", Kind::Http2Settings),
    (b"x-forwarded-for", Kind::XForwardedFor),
    (b"x-forwarded-proto", Kind::XForwardedProto),
    (b"x-forwarded-host", Kind::XForwardedHost),
    (b"x-real-ip", Kind::XRealIp),
    (b"forwarded", Kind::Untrusted),
    (b"x-forwarded-port", Kind::Untrusted),
    (b"x-forwarded-prefix", Kind::Untrusted),
    (b"x-forwarded-server", Kind::Untrusted),
    (b"x-forwarded-ssl", Kind::Untrusted),
    (b"front-end-https", Kind::Untrusted),
    (b"x-url-scheme", Kind::Untrusted),
    (b"x-forwarded-scheme", Kind::Untrusted),
    (b"x-original-url", Kind::Untrusted),
    (b"x-rewrite-url", Kind::Untrusted),
    (b"true-client-ip", Kind::Untrusted),
    (b"x-client-ip", Kind::Untrusted),
    (b"user-agent", Kind::UserAgent),
    (b"referer", Kind::Referer),
    (b"date", Kind::Date),
    (b"strict-transport-security", Kind::Hsts),
];

/// The longest name in [`NAMES`].
const LONGEST: usize = 25;

/// For each length, the indices into [`NAMES`] of the names that long, as bits.
static BY_LEN: [u32; LONGEST + 1] = by_len();

const fn by_len() -> [u32; LONGEST + 1] {
    let mut table = [0u32; LONGEST + 1];
    let mut i = 0;
    while i < NAMES.len() {
        table[NAMES[i].0.len()] |= 1 << i;
        i += 1;
    }
    table
}

pub(crate) fn kind_of(name: &[u8]) -> Kind {
    let mut candidates = BY_LEN.get(name.len()).copied().unwrap_or(0);
    while candidates != 0 {
        let (known, kind) = NAMES[candidates.trailing_zeros() as usize];
        candidates &= candidates - 1;
        match same_name(known, name) {
            Some(false) => return kind,
            // A forwarding field spelled with `_` for `-` (`headers::forwarding_alias`).
            Some(true) if kind.is_forwarding() => return Kind::Untrusted,
            _ => {}
        }
    }
    Kind::Other
}

/// Whether `name` is `known` (lower case) in any case, and if so whether it
/// spelled a `-` as `_`: one pass, stopping at the first byte that differs.
fn same_name(known: &[u8], name: &[u8]) -> Option<bool> {
    let mut underscore = false;
    for (&k, &n) in known.iter().zip(name) {
        if k != n.to_ascii_lowercase() {
            if k == b'-' && n == b'_' {
                underscore = true;
            } else {
                return None;
            }
        }
    }
    Some(underscore)
}

impl Kind {
    /// A field Wharf sets, or drops from an untrusted peer.
    fn is_forwarding(self) -> bool {
        matches!(
            self,
            Kind::XForwardedFor
                | Kind::XForwardedProto
                | Kind::XForwardedHost
                | Kind::XRealIp
                | Kind::Untrusted
        )
    }
}

/// One field of a head: offsets into the head's bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Field {
    pub name: (u32, u32),
    pub value: (u32, u32),
    pub kind: Kind,
}

impl Field {
    pub fn name<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.name.0 as usize..self.name.1 as usize]
    }
    pub fn value<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[self.value.0 as usize..self.value.1 as usize]
    }

    /// Is it a field the engine passes through, named `name` (lower case)?
    pub fn is(&self, head: &[u8], name: &[u8]) -> bool {
        self.kind == Kind::Other && self.name(head).eq_ignore_ascii_case(name)
    }
}

/// How a message's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the connection closes (a response without length).
    Eof,
}

/// A parse's outcome.
#[derive(Debug)]
pub(crate) enum Parse<T> {
    /// More bytes needed.
    Partial,
    Done(T),
    /// Not the engine's: hyper takes the connection (request), or the
    /// message is malformed (response).
    Decline(&'static str),
}

/// A request head the engine serves; its fields are in the caller's vector.
#[derive(Debug, Clone)]
pub(crate) struct ReqHead {
    /// Bytes of the head, through the empty line.
    pub len: usize,
    pub method: (u32, u32),
    pub target: (u32, u32),
    pub host: (u32, u32),
    pub body: Framing,
    /// `Connection: close`.
    pub close: bool,
    /// Every `TE` field says `trailers` (kept for the backend).
    pub te_trailers: bool,
    /// A `TE` field lists `trailers`: the client takes trailer fields.
    pub accepts_trailers: bool,
}

/// Where `part` lies in `base`. A part that is not inside it (httparse
/// gives a static `""` for a reason phrase with bytes outside UTF-8) is empty.
fn span(base: &[u8], part: &[u8]) -> (u32, u32) {
    match (part.as_ptr() as usize).checked_sub(base.as_ptr() as usize) {
        Some(start) if start + part.len() <= base.len() => {
            (start as u32, (start + part.len()) as u32)
        }
        _ => (0, 0),
    }
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

/// A decimal `Content-Length` (RFC 9110 §8.6), at most 18 digits.
fn content_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 18 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')))
}

/// Bytes a request target may hold on the engine's path: RFC 3986 `pchar`,
/// `/`, `?` and `%`. Anything else (quotes, braces, `#`, non-ASCII) goes to
/// hyper, which decides as it always did.
fn target_byte_ok(b: u8) -> bool {
    b.is_ascii_alphanumeric()
        || matches!(
            b,
            b'-' | b'.'
                | b'_'
                | b'~'
                | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
                | b'/'
                | b'?'
                | b'%'
        )
}

/// Does a `Connection` value list only `keep-alive` and `close`? Any other
/// token names a field to remove, which the engine leaves to hyper (requests)
/// or to the header-map path (responses).
fn connection_tokens(v: &[u8], close: &mut bool) -> bool {
    for t in v.split(|b| *b == b',') {
        let t = trim(t);
        if t.eq_ignore_ascii_case(b"close") {
            *close = true;
        } else if !(t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive")) {
            return false;
        }
    }
    true
}

/// Parses a request head at the start of `buf`, filling `fields`.
pub(crate) fn parse_request(
    buf: &[u8],
    fields: &mut Vec<Field>,
    max_headers: usize,
) -> Parse<ReqHead> {
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(buf, &mut raw) {
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Ok(httparse::Status::Complete(n)) => n,
        Err(_) => return Parse::Decline("malformed or oversized head"),
    };
    if req.version != Some(1) {
        return Parse::Decline("not HTTP/1.1");
    }
    let (Some(method), Some(target)) = (req.method, req.path) else {
        return Parse::Decline("no request line");
    };
    if req.headers.len() > max_headers {
        return Parse::Decline("too many fields");
    }
    // hyper refuses a target over 65,534 bytes with 414: it decides.
    if !target.starts_with('/') || target.len() > 65_000 || !target.bytes().all(target_byte_ok) {
        return Parse::Decline("request target");
    }
    fields.clear();
    // Sized once: a connection's first head would grow it four times.
    fields.reserve(req.headers.len());
    let (mut host, mut body, mut close, mut te_trailers) = (None, Framing::None, false, true);
    let (mut has_te, mut accepts_trailers) = (false, false);
    for h in req.headers.iter() {
        let kind = kind_of(h.name.as_bytes());
        match kind {
            Kind::Host => {
                if host.is_some() {
                    return Parse::Decline("two Host fields");
                }
                host = Some(span(buf, h.value));
            }
            Kind::ContentLength => {
                if body != Framing::None {
                    return Parse::Decline("framing");
                }
                match content_length(h.value) {
                    Some(n) => body = Framing::Length(n),
                    None => return Parse::Decline("Content-Length"),
                }
            }
            Kind::TransferEncoding => {
                if body != Framing::None || !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                    return Parse::Decline("framing");
                }
                body = Framing::Chunked;
            }
            Kind::Connection if !connection_tokens(h.value, &mut close) => {
                return Parse::Decline("Connection names fields");
            }
            Kind::Upgrade | Kind::Expect | Kind::Http2Settings => {
                return Parse::Decline("upgrade or expectation");
            }
            Kind::Te => {
                has_te = true;
                te_trailers &= trim(h.value).eq_ignore_ascii_case(b"trailers");
                accepts_trailers |= list_has(h.value, b"trailers");
            }
            _ => {}
        }
        fields.push(Field {
            name: span(buf, h.name.as_bytes()),
            value: span(buf, h.value),
            kind,
        });
    }
    let Some(host) = host else {
        return Parse::Decline("no Host");
    };
    if body == Framing::Length(0) {
        body = Framing::None;
    }
    Parse::Done(ReqHead {
        len,
        method: span(buf, method.as_bytes()),
        target: span(buf, target.as_bytes()),
        host,
        body,
        close,
        te_trailers: has_te && te_trailers,
        accepts_trailers,
    })
}

/// Why a response with a transfer coding other than `chunked` alone is a 502:
/// the engine does not relay other codings (not the backend's health).
pub(crate) const UNSUPPORTED_CODING: &str = "Transfer-Encoding other than chunked";

/// A backend's response head.
#[derive(Debug, Clone)]
pub(crate) struct RespHead {
    pub len: usize,
    pub code: u16,
    pub reason: (u32, u32),
    /// How the body arrives (before HEAD/204/304 are taken into account).
    pub body: Framing,
    /// The backend will close (`Connection: close`, or HTTP/1.0).
    pub close: bool,
    /// `Connection` names other fields: the header-map path removes them.
    pub listed: bool,
}

/// Parses a response head at the start of `buf`; malformed is `Decline`.
pub(crate) fn parse_response(buf: &[u8], fields: &mut Vec<Field>) -> Parse<RespHead> {
    let mut raw = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_FIELDS];
    let mut resp = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, &mut raw);
    let len = match parsed {
        Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE_HEAD => {
            return Parse::Decline("response head too large")
        }
        Ok(httparse::Status::Partial) => return Parse::Partial,
        Ok(httparse::Status::Complete(n)) => n,
        Err(_) => return Parse::Decline("malformed response head"),
    };
    let (Some(version), Some(code)) = (resp.version, resp.code) else {
        return Parse::Decline("malformed status line");
    };
    if !(100..=999).contains(&code) {
        return Parse::Decline("status code");
    }
    fields.clear();
    fields.reserve(resp.headers.len());
    let (mut body, mut close, mut listed) = (Framing::Eof, version == 0, false);
    for h in resp.headers.iter() {
        let kind = kind_of(h.name.as_bytes());
        match kind {
            Kind::ContentLength => match (content_length(h.value), body) {
                // RFC 9112 §6.3: with Transfer-Encoding, Content-Length is
                // ignored (and dropped); equal repeats are one length.
                (_, Framing::Chunked) => {}
                (Some(n), Framing::Eof) => body = Framing::Length(n),
                (Some(n), Framing::Length(m)) if n == m => {}
                _ => return Parse::Decline("Content-Length"),
            },
            Kind::TransferEncoding => {
                if !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                    return Parse::Decline(UNSUPPORTED_CODING);
                }
                body = Framing::Chunked;
            }
            Kind::Connection => {
                for t in h.value.split(|b| *b == b',') {
                    let t = trim(t);
                    if t.eq_ignore_ascii_case(b"close") {
                        close = true;
                    } else if !(t.is_empty() || t.eq_ignore_ascii_case(b"keep-alive")) {
                        listed = true;
                    }
                }
            }
            _ => {}
        }
        fields.push(Field {
            name: span(buf, h.name.as_bytes()),
            value: span(buf, h.value),
            kind,
        });
    }
    // An HTTP/1.0 backend's connection is never pooled (`close` above).
    Parse::Done(RespHead {
        len,
        code,
        reason: span(buf, resp.reason.unwrap_or("").as_bytes()),
        body,
        close,
        listed,
    })
}

/// One look at a backend's bytes for the final response head, by the rule
/// both raw clients (the engine and [`crate::raw`]) share with hyper's client.
pub(crate) enum Step {
    /// Not a whole head yet: read more.
    More,
    /// An interim (1xx) response, dropped as hyper's client drops it: this
    /// many bytes.
    Interim(usize),
    Final(RespHead),
    /// The backend's fault: a 502, counted against it.
    Bad {
        failure: crate::pipeline::Failure,
        why: &'static str,
    },
}

#[inline]
pub(crate) fn response_step(buf: &[u8], fields: &mut Vec<Field>) -> Step {
    use crate::pipeline::Failure;
    match parse_response(buf, fields) {
        Parse::Done(r) if r.code == 101 => Step::Bad {
            failure: Failure::Malformed,
            why: "101 to a request without Upgrade",
        },
        Parse::Done(r) if (100..200).contains(&r.code) => Step::Interim(r.len),
        Parse::Done(r) => Step::Final(r),
        Parse::Decline(why) if why == UNSUPPORTED_CODING => Step::Bad {
            failure: Failure::Protocol,
            why,
        },
        Parse::Decline(why) => Step::Bad {
            failure: Failure::Malformed,
            why,
        },
        Parse::Partial => Step::More,
    }
}

/// Appends `name: value\r\n` with the name in lower case (as hyper writes a
/// header map's names, so both paths send the same bytes).
fn put_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    let at = out.len();
    out.extend_from_slice(name);
    out[at..].make_ascii_lowercase();
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Writes the request head for the backend: the request line as received,
/// hop-by-hop fields removed, the forwarding fields set as
/// `headers::set_forwarded` sets them, and the framing.
pub(crate) fn write_request(
    out: &mut Vec<u8>,
    head: &[u8],
    req: &ReqHead,
    fields: &[Field],
    client: &ClientInfo,
    rules: &Rules,
    cookie: Option<&[u8]>,
) {
    let part = |(a, b): (u32, u32)| &head[a as usize..b as usize];
    // Room for the head and the fields Wharf adds, at once: a connection's
    // first head would grow the buffer six times or more.
    out.reserve(req.len + ADDED);
    out.extend_from_slice(part(req.method));
    out.push(b' ');
    out.extend_from_slice(part(req.target));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let trusted = client.trusted;
    let (mut proto_kept, mut host_kept, mut xff_seen) = (false, false, false);
    let mut cookie_put = false;
    for f in fields {
        let keep = match f.kind {
            Kind::Other if !rules.is_empty() && ruled(rules, f.name(head)) => false,
            Kind::Other => match cookie {
                // The sticky cookie's rewrite replaces every `Cookie` field,
                // where the first one was (as inserting into a header map
                // does); empty, none is sent.
                Some(c) if f.is(head, b"cookie") => {
                    if !cookie_put && !c.is_empty() {
                        put_field(out, b"cookie", c);
                    }
                    cookie_put = true;
                    false
                }
                _ => true,
            },
            Kind::Host | Kind::UserAgent | Kind::Referer | Kind::Date => true,
            Kind::Hsts => true,
            Kind::ContentLength => true,
            Kind::Te => req.te_trailers,
            Kind::Connection
            | Kind::HopByHop
            | Kind::TransferEncoding
            | Kind::Upgrade
            | Kind::Expect
            | Kind::Http2Settings
            | Kind::XRealIp => false,
            Kind::Untrusted => trusted,
            Kind::XForwardedFor => {
                xff_seen = true;
                false
            }
            Kind::XForwardedProto => {
                proto_kept |= trusted;
                trusted
            }
            Kind::XForwardedHost => {
                host_kept |= trusted;
                trusted
            }
        };
        if keep {
            put_field(out, f.name(head), f.value(head));
        }
    }
    out.extend_from_slice(b"x-forwarded-for: ");
    if trusted && xff_seen {
        for f in fields.iter().filter(|f| f.kind == Kind::XForwardedFor) {
            out.extend_from_slice(f.value(head));
            out.extend_from_slice(b", ");
        }
    }
    out.extend_from_slice(client.ip.as_bytes());
    out.extend_from_slice(b"\r\n");
    if !proto_kept {
        put_field(
            out,
            b"x-forwarded-proto",
            if client.https { b"https" } else { b"http" },
        );
    }
    if !host_kept {
        put_field(out, b"x-forwarded-host", part(req.host));
    }
    put_field(out, b"x-real-ip", client.ip.as_bytes());
    if !rules.is_empty() {
        put_rules(out, rules);
    }
    if req.body == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// About what Wharf adds to a head it writes (forwarding fields, `Date`,
/// HSTS, the chunked coding): room reserved beside the head's own length.
pub(crate) const ADDED: usize = 256;

/// A route's header rules for one direction (`headers.request` or
/// `headers.response`): in order, each sets a field (replacing every value)
/// or removes it.
pub(crate) type Rules = [(HeaderName, Option<HeaderValue>)];

/// Can the rules be applied to borrowed fields? When every name they touch
/// is one the engine passes through untouched: a rule on a framing,
/// hop-by-hop or forwarding field (whose values Wharf itself writes) takes
/// the header-map path, where the rules run after Wharf's own fields, as on
/// the hyper path.
pub(crate) fn plain_rules(rules: &Rules) -> bool {
    // `Trailer` too: it decides which trailer fields go on.
    rules
        .iter()
        .all(|(n, _)| kind_of(n.as_str().as_bytes()) == Kind::Other && n != http::header::TRAILER)
}

/// Does a rule name this field? Then the field is dropped and the rules'
/// outcome follows ([`put_rules`]).
fn ruled(rules: &Rules, name: &[u8]) -> bool {
    rules
        .iter()
        .any(|(n, _)| n.as_str().as_bytes().eq_ignore_ascii_case(name))
}

/// The fields the rules leave: for each name, its last rule decides (a set
/// replaces, a removal removes), as applying them in order to a header map does.
fn put_rules(out: &mut Vec<u8>, rules: &Rules) {
    for (i, (name, value)) in rules.iter().enumerate() {
        let last = !rules[i + 1..].iter().any(|(n, _)| n == name);
        if let (true, Some(v)) = (last, value) {
            put_field(out, name.as_str().as_bytes(), v.as_bytes());
        }
    }
}

/// The values of a head's fields named `name` (lower case) that the engine
/// passes through untouched (`Cookie`, `Set-Cookie`, `Cache-Control`).
pub(crate) fn values_of<'a>(
    head: &'a [u8],
    fields: &'a [Field],
    name: &'static [u8],
) -> impl Iterator<Item = &'a [u8]> {
    fields
        .iter()
        .filter(move |f| f.is(head, name))
        .map(move |f| f.value(head))
}

/// A head's fields as a header map, for the phases that work on one (the
/// features a route configures: stickiness, authentication, header rules).
pub(crate) fn to_map(head: &[u8], fields: &[Field]) -> HeaderMap {
    map_with(head, fields, |f| {
        HeaderValue::from_bytes(f.value(head)).ok()
    })
}

/// As [`to_map`], with values that share `head`'s bytes instead of copying
/// them: one reference count per value, not one allocation.
pub(crate) fn to_map_shared(head: &bytes::Bytes, fields: &[Field]) -> HeaderMap {
    map_with(head, fields, |f| {
        let (start, end) = (f.value.0 as usize, f.value.1 as usize);
        HeaderValue::from_maybe_shared(head.slice(start..end)).ok()
    })
}

fn map_with(
    head: &[u8],
    fields: &[Field],
    value: impl Fn(&Field) -> Option<HeaderValue>,
) -> HeaderMap {
    let mut map = HeaderMap::with_capacity(fields.len() + 4);
    for f in fields {
        // httparse checked both; a field the http crate refuses is dropped.
        if let (Ok(n), Some(v)) = (HeaderName::from_bytes(f.name(head)), value(f)) {
            map.append(n, v);
        }
    }
    map
}

/// Appends a header map's fields.
pub(crate) fn write_map(out: &mut Vec<u8>, map: &HeaderMap) {
    for (n, v) in map {
        put_field(out, n.as_str().as_bytes(), v.as_bytes());
    }
}

/// Writes a request head from a header map (routes whose phases rewrote it).
pub(crate) fn write_request_map(out: &mut Vec<u8>, method: &[u8], target: &[u8], map: &HeaderMap) {
    out.extend_from_slice(method);
    out.push(b' ');
    out.extend_from_slice(target);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    write_map(out, map);
    out.extend_from_slice(b"\r\n");
}

/// The status line, in Wharf's own version (RFC 9110 §6.2), with the
/// backend's reason as sent (even empty, as hyper relays it), or the
/// canonical one for an answer of Wharf's own (`None`).
pub(crate) fn write_status(out: &mut Vec<u8>, code: u16, reason: Option<&[u8]>) {
    out.extend_from_slice(b"HTTP/1.1 ");
    let mut digits = itoa::Buffer::new();
    out.extend_from_slice(digits.format(code).as_bytes());
    out.push(b' ');
    if let Some(reason) = reason {
        out.extend_from_slice(reason);
    } else {
        let canonical = http::StatusCode::from_u16(code)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("");
        out.extend_from_slice(canonical.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
}

/// The response fields of the fast path: hop-by-hop ones removed (and
/// `Content-Length` when the body was chunked), the route's HSTS value in
/// place of the backend's, `extra` fields added (a sticky cookie), the
/// rules' last. Says whether the backend sent a `Date`.
pub(crate) fn write_response_fields(
    out: &mut Vec<u8>,
    head: &[u8],
    fields: &[Field],
    resp: &RespHead,
    hsts: Option<&HeaderValue>,
    extra: &[(&[u8], &[u8])],
    rules: &Rules,
) -> bool {
    let mut date = false;
    for f in fields {
        let keep = match f.kind {
            Kind::Other => rules.is_empty() || !ruled(rules, f.name(head)),
            Kind::Connection | Kind::HopByHop | Kind::TransferEncoding | Kind::Upgrade => false,
            // hyper's server drops it on a 204 too (RFC 9110 §8.6).
            Kind::ContentLength => resp.body != Framing::Chunked && resp.code != 204,
            // As `strip_hop_by_hop`: `TE: trailers` stays.
            Kind::Te => trim(f.value(head)).eq_ignore_ascii_case(b"trailers"),
            Kind::Hsts => hsts.is_none(),
            Kind::Date => {
                date = true;
                true
            }
            _ => true,
        };
        if keep {
            put_field(out, f.name(head), f.value(head));
        }
    }
    if let Some(v) = hsts {
        put_field(out, b"strict-transport-security", v.as_bytes());
    }
    for (name, value) in extra {
        if rules.is_empty() || !ruled(rules, name) {
            put_field(out, name, value);
        }
    }
    if !rules.is_empty() {
        put_rules(out, rules);
    }
    date
}

/// Appends `date: <now>`, formatted at most once a second per thread.
pub(crate) fn put_date(out: &mut Vec<u8>) {
    out.extend_from_slice(b"date: ");
    out.extend_from_slice(&date_now());
    out.extend_from_slice(b"\r\n");
}

/// The HTTP date of now, formatted at most once a second per thread.
pub(crate) fn date_now() -> [u8; 29] {
    thread_local! {
        static CACHE: std::cell::Cell<(u64, [u8; 29])> = const { std::cell::Cell::new((0, [0; 29])) };
    }
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (at, mut text) = CACHE.get();
    if at != secs {
        let s = httpdate::fmt_http_date(now);
        if s.len() == 29 {
            text.copy_from_slice(s.as_bytes());
            CACHE.set((secs, text));
        }
    }
    text
}

/// The chunked coding (RFC 9112 §7.1), decoded and written again: sizes in
/// plain hex, extensions dropped, and trailer fields dropped (RFC 9110 §6.5.1
/// lets a recipient that removes the coding discard trailers) unless kept
/// ([`Chunked::keeping_trailers`]).
#[derive(Debug, Default)]
pub(crate) struct Chunked {
    state: ChunkState,
    left: u64,
    /// Data bytes decoded so far (the body without its framing).
    pub data: u64,
    /// Writes the data alone, without the chunked framing ([`Chunked::plain`]).
    plain: bool,
    /// Keeps the trailer section and leaves the last chunk to the caller.
    keep: bool,
    /// In plain mode, or when kept, the trailer section's lines as received
    /// (each with its CRLF), for the caller to pass on as trailer fields.
    pub trailers: Vec<u8>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    #[default]
    Size,
    Data,
    DataEnd,
    Trailers,
    Done,
}

/// Malformed chunked coding.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct BadChunk(pub &'static str);

impl Chunked {
    /// A decoder that writes the body's data alone (for a body passed on as
    /// frames, not re-encoded).
    pub fn plain() -> Self {
        Chunked {
            plain: true,
            ..Chunked::default()
        }
    }

    /// A re-encoding decoder that keeps the trailer section and does not
    /// write the last chunk: the caller ends the body ([`write_last_chunk`]).
    pub fn keeping_trailers() -> Self {
        Chunked {
            keep: true,
            ..Chunked::default()
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes what it can of `input`, appending the re-encoded bytes to
    /// `out`; returns the bytes of `input` consumed. Stops at the end of the
    /// body (the rest of `input` is the next message's).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, BadChunk> {
        let mut at = 0;
        loop {
            let rest = &input[at..];
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Size => {
                    let Some(eol) = crlf_line(rest, MAX_CHUNK_LINE, "chunk-size line")? else {
                        return Ok(at);
                    };
                    let line = &rest[..eol - 1];
                    let digits = line
                        .iter()
                        .position(|b| !b.is_ascii_hexdigit())
                        .unwrap_or(line.len());
                    if digits == 0 || digits > 15 {
                        return Err(BadChunk("chunk size"));
                    }
                    // Then whitespace (hyper takes it), an extension, or the end.
                    match trim(&line[digits..]).first() {
                        None | Some(b';') => {}
                        Some(_) => return Err(BadChunk("chunk size")),
                    }
                    if line.iter().any(|b| *b == b'\r' || *b == 0) {
                        return Err(BadChunk("chunk extension"));
                    }
                    let size = line[..digits].iter().fold(0u64, |n, d| {
                        n * 16 + u64::from((*d as char).to_digit(16).unwrap_or(0))
                    });
                    at += eol + 1;
                    if size == 0 {
                        self.state = ChunkState::Trailers;
                    } else {
                        if !self.plain {
                            out.extend_from_slice(format_hex(size, &mut [0; 16]));
                            out.extend_from_slice(b"\r\n");
                        }
                        self.left = size;
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    if rest.is_empty() {
                        return Ok(at);
                    }
                    let n = rest
                        .len()
                        .min(usize::try_from(self.left).unwrap_or(usize::MAX));
                    out.extend_from_slice(&rest[..n]);
                    at += n;
                    self.left -= n as u64;
                    self.data += n as u64;
                    if self.left == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::DataEnd => {
                    if rest.len() < 2 {
                        return Ok(at);
                    }
                    if &rest[..2] != b"\r\n" {
                        return Err(BadChunk("chunk data without CRLF"));
                    }
                    if !self.plain {
                        out.extend_from_slice(b"\r\n");
                    }
                    at += 2;
                    self.state = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    // Lines up to an empty one; each is dropped.
                    let Some(eol) = crlf_line(rest, MAX_TRAILERS, "trailer line")? else {
                        return Ok(at);
                    };
                    if (self.plain || self.keep) && eol > 1 {
                        if self.trailers.len() + eol + 1 > MAX_TRAILERS {
                            return Err(BadChunk("trailer section"));
                        }
                        self.trailers.extend_from_slice(&rest[..eol + 1]);
                    }
                    at += eol + 1;
                    if eol == 1 {
                        if !self.plain && !self.keep {
                            out.extend_from_slice(b"0\r\n\r\n");
                        }
                        self.state = ChunkState::Done;
                    }
                }
            }
        }
    }
}

/// A trailer section's lines as fields; `None` when there are none (or none
/// that parse: trailers are dropped then, as RFC 9110 §6.5.1 allows).
pub(crate) fn trailer_map(lines: &[u8]) -> Option<HeaderMap> {
    if lines.is_empty() {
        return None;
    }
    let mut section = Vec::with_capacity(lines.len() + 2);
    section.extend_from_slice(lines);
    section.extend_from_slice(b"\r\n");
    // As many fields as hyper's client takes in a trailer section.
    let mut raw = [httparse::EMPTY_HEADER; 100];
    let httparse::Status::Complete((_, fields)) =
        httparse::parse_headers(&section, &mut raw).ok()?
    else {
        return None;
    };
    let mut map = HeaderMap::with_capacity(fields.len());
    for f in fields {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) {
            map.append(n, v);
        }
    }
    (!map.is_empty()).then_some(map)
}

/// The names a response's `Trailer` fields declare.
pub(crate) fn declared_trailers(head: &[u8], fields: &[Field]) -> Vec<HeaderName> {
    list_names(
        fields
            .iter()
            .filter(|f| f.name(head).eq_ignore_ascii_case(b"trailer"))
            .map(|f| f.value(head)),
    )
}

/// The field names comma-separated lists name (as hyper reads `Trailer`: a
/// value that is not visible ASCII names none).
pub(crate) fn list_names<'a>(values: impl Iterator<Item = &'a [u8]>) -> Vec<HeaderName> {
    values
        .filter(|v| visible(v))
        .flat_map(|v| v.split(|b| *b == b','))
        .filter_map(|n| HeaderName::from_bytes(trim(n)).ok())
        .collect()
}

/// Does the comma-separated list `value` hold `token` (any case)? As the
/// http crate's `to_str` reads a value: one that is not visible ASCII holds
/// nothing.
pub(crate) fn list_has(value: &[u8], token: &[u8]) -> bool {
    visible(value)
        && value
            .split(|b| *b == b',')
            .any(|t| trim(t).eq_ignore_ascii_case(token))
}

/// Visible ASCII and tabs: what `HeaderValue::to_str` accepts.
fn visible(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (32..127).contains(&b))
}

/// Ends a chunked body kept by [`Chunked::keeping_trailers`]: the last
/// chunk, the trailer fields `declared` names that may be trailers, the
/// empty line. What hyper's server sends a client that takes trailers: the
/// declared fields only, grouped by name, never one that frames, routes,
/// authenticates or sets cookies (RFC 9110 §6.5.1).
pub(crate) fn write_last_chunk(out: &mut Vec<u8>, lines: &[u8], declared: &[HeaderName]) {
    use http::header as h;
    out.extend_from_slice(b"0\r\n");
    let forbidden = [
        h::AUTHORIZATION,
        h::CACHE_CONTROL,
        h::CONTENT_ENCODING,
        h::CONTENT_LENGTH,
        h::CONTENT_RANGE,
        h::CONTENT_TYPE,
        h::HOST,
        h::MAX_FORWARDS,
        h::SET_COOKIE,
        h::TRAILER,
        h::TRANSFER_ENCODING,
        h::TE,
    ];
    if let Some(map) = trailer_map(lines) {
        let mut kept = HeaderMap::new();
        for (name, value) in &map {
            if declared.contains(name) && !forbidden.contains(name) {
                kept.append(name.clone(), value.clone());
            }
        }
        write_map(out, &kept);
    }
    out.extend_from_slice(b"\r\n");
}

/// Where the line at the start of `rest` ends (the index of its `\n`, after a
/// `\r`), `None` while it is incomplete and at most `max` bytes; a bare `\n`
/// or a longer line is malformed.
fn crlf_line(rest: &[u8], max: usize, what: &'static str) -> Result<Option<usize>, BadChunk> {
    match rest.iter().position(|b| *b == b'\n') {
        None if rest.len() > max => Err(BadChunk(what)),
        None => Ok(None),
        Some(eol) if eol == 0 || rest[eol - 1] != b'\r' || eol > max => Err(BadChunk(what)),
        Some(eol) => Ok(Some(eol)),
    }
}

fn format_hex(mut n: u64, buf: &mut [u8; 16]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b"0123456789abcdef"[(n & 15) as usize];
        n >>= 4;
        if n == 0 {
            return &buf[i..];
        }
    }
}

/// Wraps `data` as one chunk (a body of unknown length sent on chunked).
pub(crate) fn put_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(format_hex(data.len() as u64, &mut [0; 16]));
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
}

/// Fuzzing: parses `data` as a request head and, when the engine would
/// serve it, checks that the head written for the backend is one complete
/// HTTP/1.1 head (nothing after it, so nothing smuggled), with one `Host`,
/// the same method and target, and no hop-by-hop field.
pub fn fuzz_request_round_trip(data: &[u8], trusted: bool) {
    let mut fields = Vec::new();
    let Parse::Done(req) = parse_request(data, &mut fields, 100) else {
        return;
    };
    assert!(req.len <= data.len());
    let client = ClientInfo {
        ip: crate::headers::IpText::new(std::net::IpAddr::from([192, 0, 2, 1])),
        trusted,
        https: false,
    };
    // A sticky cookie's rewrite of the `Cookie` fields, or none.
    let cookie: Option<&[u8]> = match data.len() % 3 {
        0 => None,
        1 => Some(b""),
        _ => Some(b"app=1; z=2"),
    };
    let mut out = Vec::new();
    write_request(&mut out, data, &req, &fields, &client, &[], cookie);
    let mut again = Vec::new();
    let Parse::Done(back) = parse_request(&out, &mut again, MAX_FIELDS) else {
        panic!(
            "the written head does not parse: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(back.len, out.len(), "bytes after the written head");
    let part = |b: &'_ [u8], (x, y): (u32, u32)| b[x as usize..y as usize].to_vec();
    assert_eq!(part(&out, back.method), part(data, req.method));
    assert_eq!(part(&out, back.target), part(data, req.target));
    assert_eq!(part(&out, back.host), part(data, req.host));
    assert_eq!(back.body, req.body);
    for f in &again {
        assert!(
            !matches!(f.kind, Kind::Connection | Kind::HopByHop | Kind::Upgrade),
            "hop-by-hop field written"
        );
        if !trusted {
            assert!(f.kind != Kind::Untrusted, "untrusted forwarding field kept");
        }
    }
    let count = |k: Kind| again.iter().filter(|f| f.kind == k).count();
    assert_eq!(count(Kind::XForwardedFor), 1);
    assert_eq!(count(Kind::XRealIp), 1);
    let sent: Vec<&[u8]> = values_of(&out, &again, b"cookie").collect();
    let received = values_of(data, &fields, b"cookie").count();
    match cookie {
        None => assert_eq!(sent.len(), received, "Cookie fields without a rewrite"),
        Some(c) if c.is_empty() || received == 0 => assert!(sent.is_empty(), "{sent:?}"),
        Some(c) => assert_eq!(sent, [c], "the rewrite replaces every Cookie field"),
    }
}

/// Fuzzing: a response head the engine accepts is written as one complete
/// head whose framing says what the engine will send.
pub fn fuzz_response_round_trip(data: &[u8]) {
    let mut fields = Vec::new();
    let Parse::Done(resp) = parse_response(data, &mut fields) else {
        return;
    };
    // The written head adds a field; its parse here has room for MAX_FIELDS.
    if fields.len() >= MAX_FIELDS {
        return;
    }
    assert!(resp.len <= data.len());
    let mut out = Vec::new();
    write_status(
        &mut out,
        resp.code,
        Some(&data[resp.reason.0 as usize..resp.reason.1 as usize]),
    );
    write_response_fields(&mut out, data, &fields, &resp, None, &[], &[]);
    if matches!(resp.body, Framing::Chunked | Framing::Eof) {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    out.extend_from_slice(b"\r\n");
    let mut again = Vec::new();
    let Parse::Done(back) = parse_response(&out, &mut again) else {
        panic!(
            "the written head does not parse: {:?}",
            String::from_utf8_lossy(&out)
        );
    };
    assert_eq!(back.len, out.len(), "bytes after the written head");
    assert_eq!(back.code, resp.code);
    // A 204 has no body whatever its fields say, and its Content-Length is
    // not written (as hyper's server drops it): no framing to compare.
    if resp.code == 204 {
        return;
    }
    let expect = match resp.body {
        Framing::Eof => Framing::Chunked,
        other => other,
    };
    assert_eq!(back.body, expect);
}

/// Fuzzing: the chunked decoder gives the same bytes however its input is
/// split, and its output is itself valid chunked coding that decodes to
/// itself.
pub fn fuzz_chunked(data: &[u8], step: usize) {
    let mut whole = Chunked::default();
    let mut out = Vec::new();
    let used = whole.decode(data, &mut out);
    let mut split = Chunked::default();
    let mut out2 = Vec::new();
    let mut pending: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut split_result = Ok(0);
    while fed < data.len() && !split.is_done() {
        let end = (fed + step.max(1)).min(data.len());
        pending.extend_from_slice(&data[fed..end]);
        fed = end;
        match split.decode(&pending, &mut out2) {
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) => {
                split_result = Err(e);
                break;
            }
        }
    }
    match used {
        Ok(n) if whole.is_done() => {
            assert!(split.is_done());
            assert_eq!(out, out2);
            assert_eq!(data.len() - n, pending.len() + (data.len() - fed));
            let mut again = Chunked::default();
            let mut out3 = Vec::new();
            assert_eq!(again.decode(&out, &mut out3), Ok(out.len()));
            assert!(again.is_done());
            assert_eq!(out3, out);
            // Kept trailers, every one declared: still valid chunked coding,
            // with the same data.
            let mut kept = Chunked::keeping_trailers();
            let mut out4 = Vec::new();
            // Kept, a trailer section has a limit of its own, past which the
            // body is malformed.
            let r = kept.decode(data, &mut out4);
            if r == Err(BadChunk("trailer section")) {
                return;
            }
            assert_eq!(r, Ok(n));
            let declared: Vec<HeaderName> = trailer_map(&kept.trailers)
                .map(|m| m.keys().cloned().collect())
                .unwrap_or_default();
            write_last_chunk(&mut out4, &kept.trailers, &declared);
            let mut check = Chunked::plain();
            let mut data_only = Vec::new();
            assert_eq!(check.decode(&out4, &mut data_only), Ok(out4.len()));
            assert!(check.is_done());
            assert_eq!(check.data, whole.data);
        }
        Ok(_) => assert!(!split.is_done() && split_result.is_ok()),
        Err(_) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(trusted: bool) -> ClientInfo {
        ClientInfo {
            ip: crate::headers::IpText::new("192.0.2.7".parse().unwrap()),
            trusted,
            https: false,
        }
    }

    fn request(raw: &[u8]) -> Parse<ReqHead> {
        parse_request(raw, &mut Vec::new(), 100)
    }

    /// A head the engine serves, and its fields.
    fn served(raw: &[u8]) -> (ReqHead, Vec<Field>) {
        let mut fields = Vec::new();
        let Parse::Done(req) = parse_request(raw, &mut fields, 100) else {
            panic!("parses: {}", String::from_utf8_lossy(raw));
        };
        (req, fields)
    }

    #[test]
    fn every_name_has_its_kind_in_any_case() {
        for (name, kind) in NAMES {
            assert_eq!(kind_of(name), kind, "{}", String::from_utf8_lossy(name));
            let upper = name.to_ascii_uppercase();
            assert_eq!(kind_of(&upper), kind);
        }
        for other in [
            &b""[..],
            b"x",
            b"hosts",
            b"hos",
            b"x-forwarded-fo",
            b"a-name-longer-than-any-known-one",
        ] {
            assert_eq!(kind_of(other), Kind::Other);
        }
        assert_eq!(kind_of(b"X_Forwarded_For"), Kind::Untrusted);
        // The `_` spellings are exactly the headers module's forwarding aliases.
        for (name, _) in NAMES {
            let under: Vec<u8> = name
                .iter()
                .map(|&b| if b == b'-' { b'_' } else { b })
                .collect();
            if under != name {
                let alias = crate::headers::forwarding_alias(std::str::from_utf8(&under).unwrap());
                assert_eq!(
                    kind_of(&under) == Kind::Untrusted,
                    alias,
                    "{}",
                    String::from_utf8_lossy(&under)
                );
            }
        }
        assert_eq!(kind_of(b"content_length"), Kind::Other);
        for name in crate::headers::UNTRUSTED_DROP {
            assert_eq!(kind_of(name.as_str().as_bytes()), Kind::Untrusted, "{name}");
        }
    }

    #[test]
    fn header_rules_on_borrowed_fields_end_as_on_a_header_map() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nX-A: old\r\nX-B: keep\r\nx-a: old2\r\n\r\n";
        let (req, fields) = served(raw);
        let v = |s: &'static str| Some(HeaderValue::from_static(s));
        let n = |s: &'static str| HeaderName::from_static(s);
        for (rules, want_a) in [
            (vec![(n("x-a"), v("1")), (n("x-a"), None)], None),
            (vec![(n("x-a"), None), (n("x-a"), v("2"))], Some("2")),
            (vec![(n("x-a"), v("1")), (n("x-c"), None)], Some("1")),
        ] {
            assert!(plain_rules(&rules));
            let mut out = Vec::new();
            write_request(&mut out, raw, &req, &fields, &info(false), &rules, None);
            let mut map = to_map(raw, &fields);
            middleware_apply(&rules, &mut map);
            let text = String::from_utf8(out).unwrap();
            let a: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("x-a: "))
                .collect();
            assert_eq!(a, want_a.into_iter().collect::<Vec<_>>(), "{text}");
            assert_eq!(map.get_all("x-a").iter().count(), a.len());
            assert!(text.contains("x-b: keep\r\n"));
        }
        assert!(!plain_rules(&[(n("x-forwarded-proto"), v("https"))]));
        assert!(!plain_rules(&[(n("date"), None)]));
        assert!(!plain_rules(&[(n("trailer"), None)]));
    }

    /// The sticky cookie's rewrite replaces every `Cookie` field where the
    /// first was, is dropped when empty, and yields to a rule on `Cookie`.
    #[test]
    fn the_cookie_rewrite_replaces_every_cookie_field() {
        let raw = b"GET / HTTP/1.1\r\nHost: a\r\nCookie: a=1; WHARFID=t\r\nX-B: keep\r\ncookie: c=3\r\n\r\n";
        let (req, fields) = served(raw);
        let cookies: Vec<&[u8]> = values_of(raw, &fields, b"cookie").collect();
        assert_eq!(cookies, [&b"a=1; WHARFID=t"[..], b"c=3"]);
        let write = |rules: &Rules, cookie: Option<&[u8]>| {
            let mut out = Vec::new();
            write_request(&mut out, raw, &req, &fields, &info(false), rules, cookie);
            String::from_utf8(out).unwrap()
        };
        let text = write(&[], Some(b"a=1; c=3"));
        assert!(
            text.contains("host: a\r\ncookie: a=1; c=3\r\nx-b: keep\r\nx-forwarded-for"),
            "{text}"
        );
        let text = write(&[], Some(b""));
        assert!(
            !text.contains("cookie") && text.contains("x-b: keep"),
            "{text}"
        );
        let text = write(&[], None);
        assert_eq!(text.matches("cookie: ").count(), 2, "{text}");
        let rule = [(
            HeaderName::from_static("cookie"),
            Some(HeaderValue::from_static("r=1")),
        )];
        let text = write(&rule, Some(b"a=1; c=3"));
        assert_eq!(
            text.lines()
                .filter(|l| l.starts_with("cookie"))
                .collect::<Vec<_>>(),
            ["cookie: r=1"],
            "{text}"
        );
    }

    fn middleware_apply(rules: &Rules, map: &mut HeaderMap) {
        wharf_table::middleware::HeaderRules::apply(rules, map);
    }

    #[test]
    fn declines_what_the_engine_leaves_to_hyper() {
        for raw in [
            &b"GET / HTTP/1.0\r\nHost: a\r\n\r\n"[..],
            b"GET http://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
            b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nConnection: x-secret\r\n\r\n",
            b"GET /a\"b HTTP/1.1\r\nHost: a\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nBad Name: x\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        ] {
            assert!(
                matches!(request(raw), Parse::Decline(_)),
                "{}",
                String::from_utf8_lossy(raw)
            );
        }
        assert!(matches!(request(b"GET / HTTP/1.1\r\nHo"), Parse::Partial));
    }

    #[test]
    fn rewrites_a_request_as_set_forwarded_does() {
        let raw = b"GET /p?q=1 HTTP/1.1\r\nHost: App.example\r\nConnection: keep-alive\r\n\
            Keep-Alive: 5\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\n\
            Forwarded: for=x\r\nX_Forwarded_For: 1\r\nTE: trailers\r\nAccept: */*\r\n\r\n";
        let (req, fields) = served(raw);
        assert_eq!(req.len, raw.len());
        let mut out = Vec::new();
        write_request(&mut out, raw, &req, &fields, &info(false), &[], None);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "GET /p?q=1 HTTP/1.1\r\nhost: App.example\r\nte: trailers\r\naccept: */*\r\n\
             x-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: http\r\n\
             x-forwarded-host: App.example\r\nx-real-ip: 192.0.2.7\r\n\r\n"
        );
        // A trusted peer's forwarding fields are kept and extended.
        let mut out = Vec::new();
        write_request(&mut out, raw, &req, &fields, &info(true), &[], None);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("x-forwarded-for: 6.6.6.6, 192.0.2.7\r\n"),
            "{text}"
        );
        assert!(text.contains("forwarded: for=x\r\n"), "{text}");
        assert!(!text.contains("x-real-ip: 6.6.6.6"), "{text}");
    }

    #[test]
    fn chunked_round_trip_and_errors() {
        let mut c = Chunked::default();
        let mut out = Vec::new();
        let input = b"5;ext=1\r\nhello\r\nA \t;x\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        let n = c.decode(input, &mut out).unwrap();
        assert!(c.is_done());
        assert_eq!(&input[n..], b"NEXT");
        assert_eq!(out, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\n\r\n");
        // Byte by byte, the same.
        let mut c = Chunked::default();
        let mut out2 = Vec::new();
        let mut pending = Vec::new();
        for b in &input[..n] {
            pending.push(*b);
            let used = c.decode(&pending, &mut out2).unwrap();
            pending.drain(..used);
        }
        assert!(c.is_done());
        assert_eq!(out2, out);
        for bad in [
            &b"5\nhello\r\n"[..],
            b"g\r\n",
            b"5 x\r\n",
            b"5\r\nhelloXX",
            b"1234567890123456\r\n",
            b"0\r\nX: 1\n",
        ] {
            assert!(
                Chunked::default().decode(bad, &mut Vec::new()).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn responses_framing() {
        let mut f = Vec::new();
        let p = |raw: &[u8], f: &mut Vec<Field>| match parse_response(raw, f) {
            Parse::Done(r) => Some(r),
            _ => None,
        };
        let r = p(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", &mut f).unwrap();
        assert_eq!((r.body, r.close), (Framing::Length(3), false));
        let r = p(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
            &mut f,
        )
        .unwrap();
        assert_eq!(r.body, Framing::Chunked);
        let r = p(b"HTTP/1.0 200 OK\r\n\r\n", &mut f).unwrap();
        assert_eq!((r.body, r.close), (Framing::Eof, true));
        assert!(p(
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n",
            &mut f
        )
        .is_none());
        assert!(p(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
            &mut f
        )
        .is_none());
        assert!(p(b"HTTP/1.1 2000 OK\r\n\r\n", &mut f).is_none());
        let big = [
            b"HTTP/1.1 200 OK\r\nX: ".as_slice(),
            &[b'a'; MAX_RESPONSE_HEAD],
        ]
        .concat();
        assert!(p(&big, &mut f).is_none());
    }
}
