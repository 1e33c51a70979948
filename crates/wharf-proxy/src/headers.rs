//! Header rewriting on the way through: hop-by-hop fields removed and the
//! `X-Forwarded-*` family set. Header names are constants so the hot path never
//! parses them.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub static X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static FORWARDED: HeaderName = HeaderName::from_static("forwarded");
static X_FORWARDED_PORT: HeaderName = HeaderName::from_static("x-forwarded-port");
static X_FORWARDED_PREFIX: HeaderName = HeaderName::from_static("x-forwarded-prefix");
static X_FORWARDED_SERVER: HeaderName = HeaderName::from_static("x-forwarded-server");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

pub const HTTP: HeaderValue = HeaderValue::from_static("http");
pub const HTTPS: HeaderValue = HeaderValue::from_static("https");
const UPGRADE: HeaderValue = HeaderValue::from_static("upgrade");

/// Hop-by-hop fields (RFC 9110 §7.6.1; RFC 2616 §13.5.1 for the older names that
/// clients still send). `TE: trailers` is kept for HTTP/2 and gRPC backends;
/// `Trailer` is end-to-end (RFC 9110 §6.6.2) and stays.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::TRANSFER_ENCODING,
    &header::UPGRADE,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
];

static X_FORWARDED_SSL: HeaderName = HeaderName::from_static("x-forwarded-ssl");
static FRONT_END_HTTPS: HeaderName = HeaderName::from_static("front-end-https");
static X_URL_SCHEME: HeaderName = HeaderName::from_static("x-url-scheme");
static X_FORWARDED_SCHEME: HeaderName = HeaderName::from_static("x-forwarded-scheme");
static X_ORIGINAL_URL: HeaderName = HeaderName::from_static("x-original-url");
static X_REWRITE_URL: HeaderName = HeaderName::from_static("x-rewrite-url");
static TRUE_CLIENT_IP: HeaderName = HeaderName::from_static("true-client-ip");
static X_CLIENT_IP: HeaderName = HeaderName::from_static("x-client-ip");
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");

/// Forwarding fields only a trusted peer may set; from anyone else they are
/// removed so an application cannot be told a forged scheme, port, address or
/// URL (RFC 7239 `Forwarded` included; `X-Original-URL`/`X-Rewrite-URL` are
/// read by IIS and Symfony as the request's real path, past any route).
pub(crate) static UNTRUSTED_DROP: [&HeaderName; 12] = [
    &FORWARDED,
    &X_FORWARDED_PORT,
    &X_FORWARDED_PREFIX,
    &X_FORWARDED_SERVER,
    &X_FORWARDED_SSL,
    &FRONT_END_HTTPS,
    &X_URL_SCHEME,
    &X_FORWARDED_SCHEME,
    &X_ORIGINAL_URL,
    &X_REWRITE_URL,
    &TRUE_CLIENT_IP,
    &X_CLIENT_IP,
];

/// Is `name`, with `_` read as `-`, a forwarding field (CGI, PHP and WSGI map
/// both spellings to one `HTTP_X_FORWARDED_FOR` variable, so an underscore
/// spelling would stand in for the field Wharf sets)?
pub(crate) fn forwarding_alias(name: &str) -> bool {
    let set = [
        &X_FORWARDED_FOR,
        &X_FORWARDED_PROTO,
        &X_FORWARDED_HOST,
        &X_REAL_IP,
    ];
    UNTRUSTED_DROP.iter().chain(set.iter()).any(|n| {
        let n = n.as_str();
        n.len() == name.len()
            && n.bytes()
                .zip(name.bytes())
                .all(|(a, b)| a == b || (a == b'-' && b == b'_'))
    })
}

/// An `Upgrade: h2c` request (RFC 7540 §3.2, removed by RFC 9113): never
/// tunnelled, so its `Upgrade` and `HTTP2-Settings` fields are dropped and
/// `true` returned.
pub fn is_h2c_upgrade(headers: &mut HeaderMap) -> bool {
    let h2c = headers
        .get_all(header::UPGRADE)
        .iter()
        .any(|v| connection_lists(v, "h2c"));
    if h2c {
        headers.remove(header::UPGRADE);
        headers.remove(&HTTP2_SETTINGS);
    }
    h2c
}

/// Joins the `Cookie` fields an HTTP/2 client sends separately into one, as
/// RFC 9113 §8.2.3 requires before forwarding over HTTP/1.1.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    let (Some(first), Some(_)) = (values.next(), values.next()) else {
        return;
    };
    let mut joined = first.as_bytes().to_vec();
    for v in headers.get_all(header::COOKIE).iter().skip(1) {
        joined.extend_from_slice(b"; ");
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// Is this an HTTP/1.1 upgrade request (`Connection: upgrade` + `Upgrade`)?
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && headers
            .get_all(header::CONNECTION)
            .iter()
            .any(|v| connection_lists(v, "upgrade"))
}

fn connection_lists(v: &HeaderValue, token: &str) -> bool {
    crate::h1::wire::list_has(v.as_bytes(), token.as_bytes())
}

/// Removes hop-by-hop fields, including every field named in `Connection`
/// (RFC 9110 §7.6.1). With `upgrade`, `Connection: upgrade` and `Upgrade` are kept
/// so the backend sees the upgrade request. Says whether `Transfer-Encoding` was
/// there (a response's `Content-Length` must then go too).
///
/// One walk over the names finds which fixed hop-by-hop fields are present and
/// whether `TE` is; only those are removed (a removal hashes; nearly every
/// response carries `Connection` and none of the others, and removing all seven
/// cost ~750 instructions a request).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) -> bool {
    let (mut found, mut te) = (0u32, false);
    for k in headers.keys() {
        if k == header::TE {
            te = true;
        } else if let Some(bit) = bit_of(&HOP_BY_HOP, k) {
            found |= bit;
        }
    }
    if found & CONNECTION_BIT != 0 {
        // Only names listed in Connection need parsing; the common message has
        // one Connection field, `keep-alive` or `close`.
        let mut values = headers.get_all(header::CONNECTION).iter();
        let simple = match (values.next(), values.next()) {
            (Some(v), None) => is_simple_token(v.as_bytes()),
            _ => false,
        };
        if !simple {
            let listed: Vec<HeaderName> = headers
                .get_all(header::CONNECTION)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|s| s.split(','))
                .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
                .collect();
            for name in listed {
                if name == header::HOST || (upgrade && name == header::UPGRADE) {
                    continue;
                }
                headers.remove(&name);
            }
        }
    }
    let upgrade_value = if upgrade {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    remove_present(headers, &HOP_BY_HOP, found);
    if te {
        let trailers_only = headers
            .get_all(header::TE)
            .iter()
            .all(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        if !trailers_only {
            headers.remove(header::TE);
        }
    }
    if let Some(u) = upgrade_value {
        headers.insert(header::CONNECTION, UPGRADE);
        headers.insert(header::UPGRADE, u);
    }
    found & TRANSFER_ENCODING_BIT != 0
}

/// `Connection`'s and `Transfer-Encoding`'s bits in a mask over [`HOP_BY_HOP`].
const CONNECTION_BIT: u32 = 1 << 0;
const TRANSFER_ENCODING_BIT: u32 = 1 << 3;

/// `name`'s bit in a mask over `names` (at most 32), if it is one of them.
/// Comparing names is cheap for standard ones (enum tags), cheaper than hashing
/// each candidate, so a walk over a message's few names finds which of a list
/// are present.
fn bit_of(names: &[&HeaderName], name: &HeaderName) -> Option<u32> {
    names.iter().position(|n| *n == name).map(|i| 1 << i)
}

/// Removes the fields of `names` whose bit is set in `mask`.
fn remove_present(headers: &mut HeaderMap, names: &[&HeaderName], mut mask: u32) {
    while mask != 0 {
        headers.remove(names[mask.trailing_zeros() as usize]);
        mask &= mask - 1;
    }
}

fn is_simple_token(v: &[u8]) -> bool {
    v.eq_ignore_ascii_case(b"keep-alive") || v.eq_ignore_ascii_case(b"close")
}

/// A client address rendered once per connection, kept inline: an allocation
/// of its own would be one more for every connection, idle ones included
/// (docs/benchmarks.md, memory per idle connection).
#[derive(Debug, Clone, Copy)]
pub struct IpText {
    len: u8,
    /// The longest text form of an address, `ffff:...:255.255.255.255`, is 45.
    buf: [u8; 45],
}

impl IpText {
    pub fn new(ip: std::net::IpAddr) -> Self {
        use std::io::Write;
        let mut buf = [0u8; 45];
        let len = match ip {
            // Digit by digit: `Display` through a formatter costs ~1,000
            // instructions, a tenth of what accepting a connection costs.
            std::net::IpAddr::V4(v4) => {
                let mut at = 0;
                for (i, octet) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        buf[at] = b'.';
                        at += 1;
                    }
                    if octet >= 100 {
                        buf[at] = b'0' + octet / 100;
                        at += 1;
                    }
                    if octet >= 10 {
                        buf[at] = b'0' + octet / 10 % 10;
                        at += 1;
                    }
                    buf[at] = b'0' + octet % 10;
                    at += 1;
                }
                at as u8
            }
            std::net::IpAddr::V6(_) => {
                let mut cursor = std::io::Cursor::new(&mut buf[..]);
                // Always fits (45 bytes); a failure would leave a shorter text.
                let _ = write!(cursor, "{ip}");
                u8::try_from(cursor.position()).unwrap_or(0)
            }
        };
        IpText { len, buf }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }

    /// As a field value (an address is always a valid one).
    pub fn header_value(&self) -> HeaderValue {
        HeaderValue::from_bytes(self.as_bytes()).unwrap_or(HeaderValue::from_static("unknown"))
    }
}

/// What the proxy knows about the client of a connection, computed once per
/// connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// The client address as a header value (`X-Real-IP`, `X-Forwarded-For`).
    pub ip: IpText,
    /// The client may set `X-Forwarded-*` itself (it is in `forwarded_trusted`).
    pub trusted: bool,
    /// The connection is TLS: `X-Forwarded-Proto: https`.
    pub https: bool,
}

impl ClientInfo {
    /// `http` or `https` (a flag, not a stored value: it is one of every
    /// connection's bytes, docs/benchmarks.md, memory per idle connection).
    pub fn proto(&self) -> HeaderValue {
        if self.https {
            HTTPS
        } else {
            HTTP
        }
    }
}

/// Sets the forwarding headers. From a trusted client, `X-Forwarded-For` is
/// extended and its `X-Forwarded-Proto`/`-Host` kept; from anyone else they are
/// replaced, so a client cannot forge its address.
pub fn set_forwarded(headers: &mut HeaderMap, client: &ClientInfo, host: &HeaderValue) {
    if !client.trusted {
        // One walk over the names finds both what to drop and whether any name
        // has an underscore (rare: most requests have neither).
        let (mut drop, mut underscore) = (0u32, false);
        for k in headers.keys() {
            match bit_of(&UNTRUSTED_DROP, k) {
                Some(bit) => drop |= bit,
                None => underscore |= k.as_str().as_bytes().contains(&b'_'),
            }
        }
        remove_present(headers, &UNTRUSTED_DROP, drop);
        if underscore {
            let aliases: Vec<HeaderName> = headers
                .keys()
                .filter(|k| k.as_str().contains('_') && forwarding_alias(k.as_str()))
                .cloned()
                .collect();
            for name in aliases {
                headers.remove(&name);
            }
        }
    }
    let xff = if client.trusted && headers.contains_key(&X_FORWARDED_FOR) {
        let mut joined: Vec<u8> = Vec::with_capacity(64);
        for v in headers.get_all(&X_FORWARDED_FOR) {
            if !joined.is_empty() {
                joined.extend_from_slice(b", ");
            }
            joined.extend_from_slice(v.as_bytes());
        }
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(client.ip.as_bytes());
        HeaderValue::from_bytes(&joined).unwrap_or_else(|_| client.ip.header_value())
    } else {
        client.ip.header_value()
    };
    // The same value for `X-Real-IP` when it is the client's alone: a clone
    // shares it.
    let real_ip = if client.trusted {
        client.ip.header_value()
    } else {
        xff.clone()
    };
    headers.insert(&X_FORWARDED_FOR, xff);
    if !(client.trusted && headers.contains_key(&X_FORWARDED_PROTO)) {
        headers.insert(&X_FORWARDED_PROTO, client.proto());
    }
    if !(client.trusted && headers.contains_key(&X_FORWARDED_HOST)) {
        headers.insert(&X_FORWARDED_HOST, host.clone());
    }
    headers.insert(&X_REAL_IP, real_ip);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The longest address text fits, and every text is the address's own.
    #[test]
    fn ip_text_renders_addresses_whole() {
        for ip in [
            "192.0.2.7",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            "::ffff:192.0.2.7",
            "::1",
        ] {
            let text = IpText::new(ip.parse().unwrap());
            assert_eq!(text.as_bytes(), ip.as_bytes());
            assert_eq!(text.header_value(), ip);
        }
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_listed_and_fixed() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret"),
            ("x-secret", "1"),
            ("keep-alive", "timeout=5"),
            ("te", "gzip"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("x-app", "kept"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-app"], "kept");
    }

    /// Only the fields present are removed (one walk finds them): each of the
    /// seven alone, and every pair, goes, and nothing else does.
    #[test]
    fn strips_each_fixed_field_alone_and_in_pairs() {
        let names = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "upgrade",
            "proxy-authenticate",
            "proxy-authorization",
        ];
        for a in 0..names.len() {
            for b in a..names.len() {
                let mut h = map(&[(names[a], "close"), (names[b], "x"), ("x-app", "kept")]);
                strip_hop_by_hop(&mut h, false);
                assert_eq!(h.len(), 1, "{} and {}: {h:?}", names[a], names[b]);
                assert_eq!(h["x-app"], "kept");
            }
        }
        let mut te = map(&[("te", "gzip"), ("connection", "keep-alive")]);
        strip_hop_by_hop(&mut te, false);
        assert!(te.is_empty(), "{te:?}");
    }

    #[test]
    fn hop_by_hop_bits_name_their_fields() {
        assert_eq!(
            bit_of(&HOP_BY_HOP, &header::CONNECTION),
            Some(CONNECTION_BIT)
        );
        assert_eq!(
            bit_of(&HOP_BY_HOP, &header::TRANSFER_ENCODING),
            Some(TRANSFER_ENCODING_BIT)
        );
        let mut chunked = map(&[("transfer-encoding", "chunked"), ("connection", "close")]);
        assert!(strip_hop_by_hop(&mut chunked, false));
        assert!(chunked.is_empty(), "{chunked:?}");
        let mut plain = map(&[("connection", "keep-alive"), ("content-length", "3")]);
        assert!(!strip_hop_by_hop(&mut plain, false));
        assert_eq!(plain.len(), 1, "{plain:?}");
    }

    #[test]
    fn ip_text_is_the_display_form() {
        for a in [0u8, 1, 9, 10, 42, 99, 100, 109, 110, 199, 200, 255] {
            for ip in [
                std::net::Ipv4Addr::new(a, 255 - a, a / 2, 7),
                std::net::Ipv4Addr::new(7, a, 0, a),
            ] {
                let ip = std::net::IpAddr::V4(ip);
                assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
            }
        }
        for ip in [
            "::1",
            "2001:db8::8a2e:370:7334",
            "::ffff:192.0.2.1",
            "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
        ] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            assert_eq!(IpText::new(ip).as_bytes(), ip.to_string().as_bytes());
        }
    }

    #[test]
    fn joins_cookies() {
        let mut h = map(&[("cookie", "a=1"), ("cookie", "b=2"), ("cookie", "c=3")]);
        join_cookies(&mut h);
        assert_eq!(h.get_all("cookie").iter().count(), 1);
        assert_eq!(h["cookie"], "a=1; b=2; c=3");
        let mut one = map(&[("cookie", "a=1")]);
        join_cookies(&mut one);
        assert_eq!(one["cookie"], "a=1");
    }

    #[test]
    fn untrusted_forwarding_fields_dropped() {
        let mut h = map(&[
            ("forwarded", "for=6.6.6.6;proto=https"),
            ("x-forwarded-port", "443"),
        ]);
        set_forwarded(&mut h, &client(false), &HeaderValue::from_static("a"));
        assert!(h.get("forwarded").is_none());
        assert!(h.get("x-forwarded-port").is_none());
        // Each dropped field alone goes too, and nothing else does.
        for name in UNTRUSTED_DROP {
            let mut h = map(&[(name.as_str(), "6.6.6.6"), ("x-app", "kept")]);
            set_forwarded(&mut h, &client(false), &HeaderValue::from_static("a"));
            assert_eq!(h["x-app"], "kept");
            let gone = h.get(name).is_none() || h[name] != "6.6.6.6"; // one Wharf sets itself
            assert!(gone, "{name} kept: {h:?}");
        }
        let mut h = map(&[("forwarded", "for=203.0.113.1")]);
        set_forwarded(&mut h, &client(true), &HeaderValue::from_static("a"));
        assert_eq!(h["forwarded"], "for=203.0.113.1");
    }

    #[test]
    fn keeps_trailer_drops_proxy_authorization() {
        let mut h = map(&[
            ("trailer", "x-checksum"),
            ("proxy-authorization", "Basic x"),
        ]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["trailer"], "x-checksum");
        assert!(h.get("proxy-authorization").is_none());
    }

    #[test]
    fn keeps_te_trailers_and_host() {
        let mut h = map(&[("te", "trailers"), ("connection", "host"), ("host", "a")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["host"], "a");
    }

    #[test]
    fn keeps_upgrade_when_upgrading() {
        let mut h = map(&[("connection", "Upgrade"), ("upgrade", "websocket")]);
        assert!(is_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
    }

    fn client(trusted: bool) -> ClientInfo {
        ClientInfo {
            ip: IpText::new("192.0.2.7".parse().unwrap()),
            trusted,
            https: false,
        }
    }

    #[test]
    fn forwarded_untrusted_replaces() {
        let mut h = map(&[
            ("x-forwarded-for", "6.6.6.6"),
            ("x-forwarded-proto", "https"),
            ("x-real-ip", "6.6.6.6"),
        ]);
        set_forwarded(
            &mut h,
            &client(false),
            &HeaderValue::from_static("a.example"),
        );
        assert_eq!(h["x-forwarded-for"], "192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "a.example");
        assert_eq!(h["x-real-ip"], "192.0.2.7");
    }

    #[test]
    fn forwarded_trusted_appends() {
        let mut h = map(&[
            ("x-forwarded-for", "203.0.113.1"),
            ("x-forwarded-for", "198.51.100.2"),
            ("x-forwarded-proto", "https"),
        ]);
        set_forwarded(
            &mut h,
            &client(true),
            &HeaderValue::from_static("a.example"),
        );
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 198.51.100.2, 192.0.2.7");
        assert_eq!(h["x-forwarded-proto"], "https");
    }

    #[test]
    fn untrusted_clients_cannot_set_scheme_url_or_address_fields() {
        let spoofed = [
            ("x-forwarded-ssl", "on"),
            ("front-end-https", "on"),
            ("x-url-scheme", "https"),
            ("x-forwarded-scheme", "https"),
            ("x-original-url", "/admin"),
            ("x-rewrite-url", "/admin"),
            ("true-client-ip", "127.0.0.1"),
            ("x-client-ip", "127.0.0.1"),
            ("x_forwarded_for", "127.0.0.1"),
            ("x_real_ip", "127.0.0.1"),
            ("X_Forwarded_Proto", "https"),
            ("x-forwarded_host", "admin.internal"),
            ("x_custom_header", "kept"),
        ];
        let host = HeaderValue::from_static("app.test");
        let untrusted = ClientInfo {
            ip: IpText::new("192.0.2.1".parse().unwrap()),
            trusted: false,
            https: false,
        };
        let mut h = map(&spoofed);
        set_forwarded(&mut h, &untrusted, &host);
        for (name, _) in &spoofed[..12] {
            assert!(!h.contains_key(name.to_ascii_lowercase()), "{name} kept");
        }
        assert_eq!(h["x_custom_header"], "kept");
        assert_eq!(h["x-forwarded-for"], "192.0.2.1");
        // A trusted peer keeps them.
        let trusted = ClientInfo {
            trusted: true,
            ..untrusted
        };
        let mut h = map(&spoofed);
        set_forwarded(&mut h, &trusted, &host);
        assert_eq!(h["x-original-url"], "/admin");
    }

    #[test]
    fn h2c_upgrade_is_dropped_not_tunnelled() {
        let mut h = map(&[
            ("connection", "Upgrade, HTTP2-Settings"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAMAAABkAAQAoAAAAAIAAAAA"),
        ]);
        assert!(is_upgrade(&h));
        assert!(is_h2c_upgrade(&mut h));
        strip_hop_by_hop(&mut h, false);
        assert!(h.is_empty(), "{h:?}");
        let mut ws = map(&[("connection", "upgrade"), ("upgrade", "websocket")]);
        assert!(!is_h2c_upgrade(&mut ws));
        assert!(ws.contains_key("upgrade"));
    }
}
