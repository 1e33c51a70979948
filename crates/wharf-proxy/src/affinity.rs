//! Session affinity on the wire: the sticky token read from and stripped out of
//! the request's `Cookie` fields, and written into the response's `Set-Cookie`.
//!
//! Insert mode: Wharf's own cookie (`WHARFID=<token>`) names the backend; it is
//! removed before the request reaches the application. Prefix mode (HAProxy's
//! `cookie JSESSIONID prefix`): the application's cookie travels as
//! `JSESSIONID=<token>~<value>` between Wharf and the client, and as
//! `JSESSIONID=<value>` between Wharf and the application.
//!
//! Parsing is one pass over the fields (RFC 6265 §4.2.1 `cookie-string`): a
//! request with a hundred cookies or a 4 KiB header costs linear work.

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};
use wharf_table::sticky::{PREFIX_SEPARATOR, TOKEN_LEN};
use wharf_table::{Backend, CookieSticky, Route, StickyPolicy, Token};

/// What the request said about affinity.
#[derive(Debug, Default)]
pub struct Affinity {
    /// The backend the client is pinned to, when its token or binding names one
    /// of this route's backends.
    pub pinned: Option<Arc<Backend>>,
    /// The replacement for the request's `Cookie` fields (our cookie removed or
    /// our prefix stripped); `None`: leave them as they are.
    pub cookie: Option<HeaderValue>,
    /// Prefix mode: the application's value of the sticky cookie, as the client
    /// sent it (without our prefix), so a re-pinned client gets it back with the
    /// new backend's token.
    pub app_value: Option<Box<[u8]>>,
    /// `sticky = source`: the client address bound.
    pub client: Option<IpAddr>,
}

/// Reads the affinity of a request on a route with stickiness, from a header
/// map (the tests' shape of [`read_values`]).
#[cfg(test)]
pub fn read(route: &Route, sticky: &StickyPolicy, headers: &HeaderMap, client: IpAddr) -> Affinity {
    read_values(route, sticky, || cookies(headers), client)
}

/// The values of a header map's `Cookie` fields.
pub fn cookies(headers: &HeaderMap) -> impl Iterator<Item = &[u8]> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .map(HeaderValue::as_bytes)
}

/// Reads the affinity of a request on a route with stickiness, from the
/// values of its `Cookie` fields wherever they are held (a header map, or the
/// HTTP/1.1 engine's borrowed fields); `cookies` iterates them, and may be
/// called twice.
pub fn read_values<'a, I: Iterator<Item = &'a [u8]>>(
    route: &Route,
    sticky: &StickyPolicy,
    cookies: impl Fn() -> I,
    client: IpAddr,
) -> Affinity {
    match sticky {
        StickyPolicy::Source { ttl } => {
            let now = wharf_table::sticky::now_secs();
            let pinned = route
                .state
                .bindings()
                .get(client, *ttl, now)
                .and_then(|id| route.backends.by_id(id))
                .cloned();
            Affinity {
                pinned,
                client: Some(client),
                ..Affinity::default()
            }
        }
        StickyPolicy::Cookie(c) => read_cookie(route, c, cookies),
    }
}

fn read_cookie<'a, I: Iterator<Item = &'a [u8]>>(
    route: &Route,
    c: &CookieSticky,
    cookies: impl Fn() -> I,
) -> Affinity {
    let mut out = Affinity::default();
    let name = c.name.as_bytes();
    // Only fields that carry our cookie are rewritten.
    let ours = |v: &[u8]| {
        v.windows(name.len() + 1)
            .any(|w| &w[..name.len()] == name && w[name.len()] == b'=')
    };
    if !cookies().any(ours) {
        return out;
    }
    let mut kept: Vec<u8> = Vec::new();
    let mut changed = false;
    for field in cookies() {
        for pair in field.split(|b| *b == b';') {
            let pair = trim(pair);
            if pair.is_empty() {
                continue;
            }
            let (k, v) = match pair.iter().position(|b| *b == b'=') {
                Some(i) => (&pair[..i], &pair[i + 1..]),
                None => (pair, &b""[..]),
            };
            let mut keep: &[u8] = pair;
            let mut rewritten = None;
            if k == name {
                if !c.prefix {
                    // Our own cookie: never forwarded.
                    changed = true;
                    keep = b"";
                    if !out.pinned.as_ref().is_some_and(|p| p.usable()) {
                        out.pinned = lookup(route, v).or(out.pinned.take());
                    }
                } else if v.len() > TOKEN_LEN && v[TOKEN_LEN] == PREFIX_SEPARATOR {
                    if let Some(t) = Token::parse(&v[..TOKEN_LEN]) {
                        // Ours (a well-formed token, known or not): the
                        // application gets its own value back.
                        changed = true;
                        let app = &v[TOKEN_LEN + 1..];
                        // Several (cookies of other paths): a usable one wins.
                        if !out.pinned.as_ref().is_some_and(|p| p.usable()) {
                            out.pinned = route.backends.by_token(&t).cloned().or(out.pinned.take());
                        }
                        out.app_value.get_or_insert_with(|| app.into());
                        let mut p = Vec::with_capacity(k.len() + 1 + app.len());
                        p.extend_from_slice(k);
                        p.push(b'=');
                        p.extend_from_slice(app);
                        rewritten = Some(p);
                    }
                } else {
                    out.app_value.get_or_insert_with(|| v.into());
                }
            }
            let keep = rewritten.as_deref().unwrap_or(keep);
            if !keep.is_empty() {
                if !kept.is_empty() {
                    kept.extend_from_slice(b"; ");
                }
                kept.extend_from_slice(keep);
            }
        }
    }
    if changed {
        // An empty value means no Cookie field at all.
        out.cookie = Some(HeaderValue::from_bytes(&kept).unwrap_or(HeaderValue::from_static("")));
    }
    out
}

fn lookup(route: &Route, v: &[u8]) -> Option<Arc<Backend>> {
    route.backends.by_token(&Token::parse(v)?).cloned()
}

fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Applies the rewritten `Cookie` field to the request on its way out.
pub fn apply_request(headers: &mut HeaderMap, cookie: Option<HeaderValue>) {
    let Some(v) = cookie else { return };
    if v.is_empty() {
        headers.remove(header::COOKIE);
    } else {
        headers.insert(header::COOKIE, v);
    }
}

const PRIVATE: HeaderValue = HeaderValue::from_static("private");

/// Another backend answered: the pinned one could not take the request
/// (gone, down, draining, full under `maxconn`) or failed it and the retry
/// went elsewhere. Either way the client is re-pinned to the one that
/// answered, in this response, and not sent back to a backend that turned it
/// away.
fn repinned(aff: &Affinity, token: Token) -> bool {
    match &aff.pinned {
        Some(p) => p.token != Some(token),
        None => true,
    }
}

/// Client-address stickiness (`ttl`): binds the client to the backend that
/// answered, unless it was pinned to it already. Writes no header field.
pub fn bind_source(route: &Route, ttl: std::time::Duration, aff: &Affinity, backend: &Backend) {
    let Some(token) = backend.token else { return };
    if let (Some(client), true) = (aff.client, repinned(aff, token)) {
        let now = wharf_table::sticky::now_secs();
        route.state.bindings().bind(client, token.id(), ttl, now);
    }
}

/// The response of a request on a route with stickiness: pins the client to
/// the backend that answered when it was not pinned to it already.
pub fn respond(
    route: &Route,
    sticky: &StickyPolicy,
    aff: &Affinity,
    backend: &Backend,
    tls: bool,
    headers: &mut HeaderMap,
) {
    match sticky {
        StickyPolicy::Source { ttl } => bind_source(route, *ttl, aff, backend),
        StickyPolicy::Cookie(c) => {
            let values = |name| headers.get_all(name).iter().map(HeaderValue::as_bytes);
            let answer = respond_values(
                c,
                aff,
                backend,
                tls,
                values(header::SET_COOKIE),
                values(header::CACHE_CONTROL),
            );
            match answer {
                CookieAnswer::Nothing => {}
                CookieAnswer::Add {
                    set_cookie,
                    private,
                } => {
                    headers.append(header::SET_COOKIE, set_cookie.clone());
                    if private {
                        headers.insert(header::CACHE_CONTROL, PRIVATE);
                    }
                }
                CookieAnswer::Rewrite => rewrite_cookies(c, aff, backend, tls, headers),
            }
        }
    }
}

/// The whole of a cookie route's respond phase on a header map, for the
/// responses whose own fields change ([`CookieAnswer::Rewrite`]).
fn rewrite_cookies(
    c: &CookieSticky,
    aff: &Affinity,
    backend: &Backend,
    tls: bool,
    headers: &mut HeaderMap,
) {
    let Some(token) = backend.token else { return };
    match c.prefix {
        false => {
            // The cookie is Wharf's: one the application sets under the same
            // name would overwrite the pin (HAProxy's insert mode removes it too).
            if headers.contains_key(header::SET_COOKIE) {
                let name = c.name.as_bytes();
                let theirs = |v: &HeaderValue| sets(name, v.as_bytes());
                if headers.get_all(header::SET_COOKIE).iter().any(theirs) {
                    let keep: Vec<HeaderValue> = headers
                        .get_all(header::SET_COOKIE)
                        .iter()
                        .filter(|v| !theirs(v))
                        .cloned()
                        .collect();
                    headers.remove(header::SET_COOKIE);
                    for v in keep {
                        headers.append(header::SET_COOKIE, v);
                    }
                }
            }
            if pins_again(c, aff, token) {
                if let Some(v) = &backend.set_cookie {
                    headers.append(header::SET_COOKIE, v[usize::from(tls)].clone());
                    no_shared_cache(headers);
                }
            }
        }
        true => {
            let text = token.text();
            let name = c.name.as_bytes();
            let mut set_by_app = false;
            let mut out: Vec<HeaderValue> = Vec::new();
            for v in headers.get_all(header::SET_COOKIE) {
                let b = v.as_bytes();
                if sets(name, b) {
                    set_by_app = true;
                    let mut nv = Vec::with_capacity(b.len() + TOKEN_LEN + 1);
                    nv.extend_from_slice(&b[..=name.len()]);
                    nv.extend_from_slice(&text);
                    nv.push(PREFIX_SEPARATOR);
                    nv.extend_from_slice(&b[name.len() + 1..]);
                    out.push(HeaderValue::from_bytes(&nv).unwrap_or_else(|_| v.clone()));
                } else {
                    out.push(v.clone());
                }
            }
            if set_by_app {
                headers.remove(header::SET_COOKIE);
                for v in out {
                    headers.append(header::SET_COOKIE, v);
                }
                no_shared_cache(headers);
            } else if repinned(aff, token) {
                // The client's session value, now with the new backend's token
                // (the application did not set a new one).
                if let Some(app) = &aff.app_value {
                    let mut nv = Vec::with_capacity(name.len() + TOKEN_LEN + app.len() + 48);
                    nv.extend_from_slice(name);
                    nv.push(b'=');
                    nv.extend_from_slice(&text);
                    nv.push(PREFIX_SEPARATOR);
                    nv.extend_from_slice(app);
                    nv.extend_from_slice(b"; Path=/; HttpOnly; SameSite=Lax");
                    if tls {
                        nv.extend_from_slice(b"; Secure");
                    }
                    if let Ok(v) = HeaderValue::from_bytes(&nv) {
                        headers.append(header::SET_COOKIE, v);
                        no_shared_cache(headers);
                    }
                }
            }
        }
    }
}

/// Does this `Set-Cookie` value set the cookie `name`?
fn sets(name: &[u8], set_cookie: &[u8]) -> bool {
    set_cookie.len() > name.len() && set_cookie.starts_with(name) && set_cookie[name.len()] == b'='
}

/// Insert mode: does the response carry the backend's cookie? When the
/// client was pinned elsewhere (or not at all), and with a Max-Age on every
/// response of the backend it names, so an active client's pin does not expire.
fn pins_again(c: &CookieSticky, aff: &Affinity, token: Token) -> bool {
    let served_by_pin = aff.pinned.as_ref().map(|p| p.token) == Some(Some(token));
    repinned(aff, token) || (c.max_age.is_some() && served_by_pin)
}

/// What a sticky-cookie route does to a response, decided from the values of
/// its `Set-Cookie` and `Cache-Control` fields alone (the HTTP/1.1 engine's
/// borrowed fields), as [`respond`] would do it on a header map.
#[derive(Debug, PartialEq, Eq)]
pub enum CookieAnswer<'a> {
    /// Nothing is added or changed.
    Nothing,
    /// One `Set-Cookie` field is added, and `Cache-Control: private` when
    /// `private` (the response has no `Cache-Control`; one that says
    /// `private` or `no-store` already stays as it is).
    Add {
        set_cookie: &'a HeaderValue,
        private: bool,
    },
    /// The response's own fields change (the application set the sticky
    /// cookie, a `Cache-Control` to merge, a prefix cookie to re-issue):
    /// for [`respond`] on a header map.
    Rewrite,
}

/// [`respond`] for a cookie route, on field values: see [`CookieAnswer`].
pub fn respond_values<'a, 'v>(
    c: &CookieSticky,
    aff: &Affinity,
    backend: &'a Backend,
    tls: bool,
    mut set_cookies: impl Iterator<Item = &'v [u8]>,
    cache_control: impl Iterator<Item = &'v [u8]>,
) -> CookieAnswer<'a> {
    let Some(token) = backend.token else {
        return CookieAnswer::Nothing;
    };
    if set_cookies.any(|v| sets(c.name.as_bytes(), v)) {
        return CookieAnswer::Rewrite;
    }
    if c.prefix {
        return if repinned(aff, token) && aff.app_value.is_some() {
            CookieAnswer::Rewrite
        } else {
            CookieAnswer::Nothing
        };
    }
    match &backend.set_cookie {
        Some(v) if pins_again(c, aff, token) => {
            let mut cache_control = cache_control.peekable();
            let private = cache_control.peek().is_none();
            if private || kept_from_shared_caches(cache_control) {
                CookieAnswer::Add {
                    set_cookie: &v[usize::from(tls)],
                    private,
                }
            } else {
                CookieAnswer::Rewrite
            }
        }
        _ => CookieAnswer::Nothing,
    }
}

/// Does a directive of these `Cache-Control` values say `private` or
/// `no-store`, unqualified? Every field counts (RFC 9111 §5.2: directives may
/// be split over fields). `private="X-Foo"` does not: it keeps only the fields
/// it names from a shared cache (RFC 9111 §5.2.2.7). A value that is not
/// visible ASCII is not read.
fn kept_from_shared_caches<'v>(values: impl Iterator<Item = &'v [u8]>) -> bool {
    values
        .flat_map(directives)
        .any(|d| d.eq_ignore_ascii_case(b"private") || d.eq_ignore_ascii_case(b"no-store"))
}

/// The directives of a `Cache-Control` value, trimmed: split at the commas
/// outside quoted strings (RFC 9110 §5.6.4), empty ones skipped; none from a
/// value that is not visible ASCII.
fn directives(v: &[u8]) -> impl Iterator<Item = &[u8]> {
    let visible = v.iter().all(|&b| b == b'\t' || (32..127).contains(&b));
    let mut rest = if visible { v } else { &[][..] };
    std::iter::from_fn(move || loop {
        if rest.is_empty() {
            return None;
        }
        let (mut quoted, mut escaped, mut end) = (false, false, rest.len());
        for (i, &b) in rest.iter().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                b',' if !quoted => {
                    end = i;
                    break;
                }
                _ => {}
            }
        }
        let d = trim(&rest[..end]);
        rest = rest.get(end + 1..).unwrap_or_default();
        if !d.is_empty() {
            return Some(d);
        }
    })
}

/// HAProxy's `nocache`: a response that sets a sticky cookie must not be kept
/// by a shared cache and served to other clients. `private` is added unless the
/// response already says `private` or `no-store`; a `public` or `s-maxage`
/// directive goes.
fn no_shared_cache(headers: &mut HeaderMap) {
    let values = || {
        headers
            .get_all(header::CACHE_CONTROL)
            .iter()
            .map(HeaderValue::as_bytes)
    };
    if values().next().is_none() {
        headers.insert(header::CACHE_CONTROL, PRIVATE);
        return;
    }
    if kept_from_shared_caches(values()) {
        return;
    }
    let mut v: Vec<u8> = Vec::new();
    for d in values().flat_map(directives).filter(|d| {
        let name = trim(d.split(|b| *b == b'=').next().unwrap_or_default());
        !name.eq_ignore_ascii_case(b"public") && !name.eq_ignore_ascii_case(b"s-maxage")
    }) {
        v.extend_from_slice(d);
        v.extend_from_slice(b", ");
    }
    v.extend_from_slice(b"private");
    if let Ok(nv) = HeaderValue::from_bytes(&v) {
        headers.insert(header::CACHE_CONTROL, nv);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_table::{BackendRegistry, Policy, RouteDef, Table};

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn route(sticky: StickyPolicy) -> (Table, Arc<Route>) {
        let reg = BackendRegistry::new();
        reg.set_sticky_key(wharf_table::StickyKey::new(b"k"));
        let mut def = RouteDef::local_for_tests(
            3,
            Policy {
                sticky: Some(Arc::new(sticky)),
                ..Policy::default()
            },
        );
        for (i, b) in def.backends.iter_mut().enumerate() {
            b.identity = Some(format!("web.{i}").into());
        }
        let (t, _) = Table::compile(vec![def], &reg);
        let r = t.routes()[0].clone();
        (t, r)
    }

    fn cookie(prefix: bool) -> StickyPolicy {
        StickyPolicy::Cookie(CookieSticky {
            name: if prefix { "JSESSIONID" } else { "WHARFID" }.into(),
            prefix,
            max_age: None,
        })
    }

    fn token(r: &Route, i: usize) -> String {
        String::from_utf8(r.backends.all()[i].token.unwrap().text().to_vec()).unwrap()
    }

    fn req(cookies: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for c in cookies {
            h.append(header::COOKIE, HeaderValue::from_str(c).unwrap());
        }
        h
    }

    #[test]
    fn insert_mode_pins_strips_and_sets() {
        let sticky = cookie(false);
        let (_t, r) = route(sticky.clone());
        let t1 = token(&r, 1);
        let a = read(
            &r,
            &sticky,
            &req(&[&format!("a=1; WHARFID={t1}; b=2")]),
            CLIENT,
        );
        assert_eq!(a.pinned.as_ref().unwrap().addr.port(), 9001);
        assert_eq!(a.cookie.as_ref().unwrap(), "a=1; b=2");
        // Pinned to the backend that answered: no new cookie.
        let mut h = HeaderMap::new();
        respond(&r, &sticky, &a, &r.backends.all()[1], false, &mut h);
        assert!(h.get(header::SET_COOKIE).is_none());
        // Answered by another (the pinned one went down): re-pinned.
        r.backends.all()[1].state.set_up(false);
        respond(&r, &sticky, &a, &r.backends.all()[2], true, &mut h);
        r.backends.all()[1].state.set_up(true);
        let set = h.get(header::SET_COOKIE).unwrap().to_str().unwrap();
        assert_eq!(
            set,
            format!(
                "WHARFID={}; Path=/; HttpOnly; SameSite=Lax; Secure",
                token(&r, 2)
            )
        );
        assert_eq!(h[header::CACHE_CONTROL], "private");
        // The application's own cookie of that name is dropped, others kept.
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("WHARFID=app; Path=/"),
        );
        h.append(header::SET_COOKIE, HeaderValue::from_static("keep=1"));
        respond(&r, &sticky, &a, &r.backends.all()[1], false, &mut h);
        let set: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(set, ["keep=1"]);
        // Only our cookie: the field goes.
        let a = read(&r, &sticky, &req(&[&format!("WHARFID={t1}")]), CLIENT);
        let mut out = req(&[&format!("WHARFID={t1}")]);
        apply_request(&mut out, a.cookie);
        assert!(out.get(header::COOKIE).is_none());
        // No cookie of ours: untouched, nothing pinned.
        let a = read(&r, &sticky, &req(&["a=1", "WHARFIDX=2"]), CLIENT);
        assert!(a.pinned.is_none() && a.cookie.is_none());
    }

    #[test]
    fn tampered_truncated_or_foreign_tokens_are_ignored() {
        let sticky = cookie(false);
        let (_t, r) = route(sticky.clone());
        let t1 = token(&r, 1);
        let mut flipped = t1.clone().into_bytes();
        flipped[3] = if flipped[3] == b'A' { b'B' } else { b'A' };
        let foreign = wharf_table::StickyKey::new(b"other").token("web.1").text();
        for bad in [
            String::from_utf8(flipped).unwrap(),
            t1[..15].to_string(),
            format!("{t1}x"),
            String::from_utf8(foreign.to_vec()).unwrap(),
            "../../etc".into(),
            String::new(),
        ] {
            let a = read(&r, &sticky, &req(&[&format!("WHARFID={bad}; a=1")]), CLIENT);
            assert!(a.pinned.is_none(), "{bad}");
            // Still ours to remove.
            assert_eq!(a.cookie.as_ref().unwrap(), "a=1");
        }
    }

    #[test]
    fn prefix_mode_round_trip() {
        let sticky = cookie(true);
        let (_t, r) = route(sticky.clone());
        let t0 = token(&r, 0);
        // The application sets its cookie: the client gets it prefixed.
        let none = read(&r, &sticky, &HeaderMap::new(), CLIENT);
        let mut h = HeaderMap::new();
        h.append(
            header::SET_COOKIE,
            HeaderValue::from_static("JSESSIONID=abc; Path=/app"),
        );
        h.append(header::SET_COOKIE, HeaderValue::from_static("other=1"));
        h.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_static("public, max-age=60"),
        );
        respond(&r, &sticky, &none, &r.backends.all()[0], false, &mut h);
        let set: Vec<_> = h.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(set[0], format!("JSESSIONID={t0}~abc; Path=/app").as_str());
        assert_eq!(set[1], "other=1");
        assert_eq!(h[header::CACHE_CONTROL], "max-age=60, private");
        // It comes back: pinned, and the application sees its own value.
        let a = read(
            &r,
            &sticky,
            &req(&[&format!("x=1; JSESSIONID={t0}~abc")]),
            CLIENT,
        );
        assert_eq!(a.pinned.as_ref().unwrap().addr.port(), 9000);
        assert_eq!(a.cookie.as_ref().unwrap(), "x=1; JSESSIONID=abc");
        // The pinned backend is gone: another answers, and without a new
        // session cookie from the application the client's value is re-pinned.
        r.backends.all()[0].state.set_up(false);
        let a = read(
            &r,
            &sticky,
            &req(&[&format!("JSESSIONID={t0}~abc")]),
            CLIENT,
        );
        let mut h = HeaderMap::new();
        respond(&r, &sticky, &a, &r.backends.all()[2], true, &mut h);
        assert_eq!(
            h[header::SET_COOKIE],
            format!(
                "JSESSIONID={}~abc; Path=/; HttpOnly; SameSite=Lax; Secure",
                token(&r, 2)
            )
            .as_str()
        );
        // A value that is not ours passes untouched and is pinned on reply.
        let a = read(&r, &sticky, &req(&["JSESSIONID=plain~value"]), CLIENT);
        assert!(a.pinned.is_none() && a.cookie.is_none());
        assert_eq!(a.app_value.as_deref(), Some(&b"plain~value"[..]));
    }

    #[test]
    fn a_usable_pin_wins_a_pin_served_elsewhere_moves_and_max_age_slides() {
        let sticky = cookie(true);
        let (_t, r) = route(sticky.clone());
        let (t0, t1) = (token(&r, 0), token(&r, 1));
        // Two prefixed cookies (another path's and this one's): the first names
        // a backend that is down, the second a usable one.
        r.backends.all()[0].state.set_up(false);
        let a = read(
            &r,
            &sticky,
            &req(&[&format!("JSESSIONID={t0}~s; JSESSIONID={t1}~s")]),
            CLIENT,
        );
        assert_eq!(a.pinned.as_ref().unwrap().addr.port(), 9001);
        // Pinned to a backend that is up but could not take the request (full,
        // or it failed and the retry went elsewhere): served elsewhere, and the
        // client's value is re-pinned to the backend that answered.
        let mut h = HeaderMap::new();
        respond(&r, &sticky, &a, &r.backends.all()[2], false, &mut h);
        assert_eq!(
            h[header::SET_COOKIE],
            format!(
                "JSESSIONID={}~s; Path=/; HttpOnly; SameSite=Lax",
                token(&r, 2)
            )
            .as_str()
        );

        // Insert mode with a ttl: the cookie is renewed on every response.
        let sticky = StickyPolicy::Cookie(CookieSticky {
            name: "WHARFID".into(),
            prefix: false,
            max_age: Some(600),
        });
        let (_t, r) = route(sticky.clone());
        let t1 = token(&r, 1);
        let a = read(&r, &sticky, &req(&[&format!("WHARFID={t1}")]), CLIENT);
        let mut h = HeaderMap::new();
        h.append(header::CACHE_CONTROL, HeaderValue::from_static("max-age=0"));
        h.append(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        respond(&r, &sticky, &a, &r.backends.all()[1], false, &mut h);
        let set = h[header::SET_COOKIE].to_str().unwrap();
        assert!(set.starts_with(&format!("WHARFID={t1};")) && set.contains("Max-Age=600"));
        // Both Cache-Control fields were read: no-store already keeps it out of
        // shared caches.
        let cc: Vec<_> = h.get_all(header::CACHE_CONTROL).iter().collect();
        assert_eq!(cc, ["max-age=0", "no-store"]);
    }

    #[test]
    fn a_hundred_cookies_and_a_long_header_are_linear() {
        let sticky = cookie(false);
        let (_t, r) = route(sticky.clone());
        let t1 = token(&r, 1);
        let many: Vec<String> = (0..100).map(|i| format!("c{i}=v{i}")).collect();
        let mut v = many.join("; ");
        v.push_str(&format!("; WHARFID={t1}; z={}", "y".repeat(4096)));
        let a = read(&r, &sticky, &req(&[&v]), CLIENT);
        assert_eq!(a.pinned.unwrap().addr.port(), 9001);
        assert!(!a.cookie.unwrap().to_str().unwrap().contains("WHARFID"));
    }

    /// What [`respond_values`] decides on field values (the HTTP/1.1
    /// engine's borrowed ones, and `respond`'s) is what the whole rewrite
    /// does to a header map: nothing, one `Set-Cookie` (and `Cache-Control:
    /// private`) added, or a rewrite left to the map.
    #[test]
    fn respond_values_says_what_respond_does() {
        let set_cookies: [&[&str]; 4] = [
            &[],
            &["a=1"],
            &["WHARFID=x; Path=/", "a=1"],
            &["JSESSIONID=app; Path=/; HttpOnly"],
        ];
        let cache_controls: [&[&str]; 9] = [
            &[],
            &["private"],
            &["max-age=60", "No-Store"],
            &["public, max-age=60"],
            &["no-cache"],
            &["no-cache=\"a,private\""],
            &["private=\"x-foo\", max-age=5"],
            &[""],
            &["private\u{e9}"],
        ];
        let policies = [
            cookie(false),
            cookie(true),
            StickyPolicy::Cookie(CookieSticky {
                name: "WHARFID".into(),
                prefix: false,
                max_age: Some(600),
            }),
        ];
        let (mut adds, mut privates, mut rewrites, mut nothing) = (0, 0, 0, 0);
        for sticky in &policies {
            let StickyPolicy::Cookie(c) = sticky else {
                unreachable!()
            };
            let (_t, r) = route(sticky.clone());
            let (t0, t1) = (token(&r, 0), token(&r, 1));
            let requests = [
                vec![],
                vec![format!("{}={t1}", c.name)],
                vec![format!("{}={t1}~s", c.name)],
                vec![format!("{}={t0}~s", c.name), "z=1".into()],
            ];
            for cookies in &requests {
                let cookies: Vec<&str> = cookies.iter().map(String::as_str).collect();
                let aff = read(&r, sticky, &req(&cookies), CLIENT);
                for (sc, cc, tls) in set_cookies.iter().flat_map(|sc| {
                    cache_controls
                        .iter()
                        .flat_map(move |cc| [(sc, cc, false), (sc, cc, true)])
                }) {
                    let mut before = HeaderMap::new();
                    for v in *sc {
                        before.append(header::SET_COOKIE, HeaderValue::from_static(v));
                    }
                    for v in *cc {
                        let v = HeaderValue::from_bytes(v.as_bytes()).unwrap();
                        before.append(header::CACHE_CONTROL, v);
                    }
                    let backend = &r.backends.all()[1];
                    // The whole rewrite is the reference the decision is held to.
                    let mut after = before.clone();
                    rewrite_cookies(c, &aff, backend, tls, &mut after);
                    let mut via_respond = before.clone();
                    respond(&r, sticky, &aff, backend, tls, &mut via_respond);
                    assert_eq!(via_respond, after);
                    let answer = respond_values(
                        c,
                        &aff,
                        backend,
                        tls,
                        sc.iter().map(|v| v.as_bytes()),
                        cc.iter().map(|v| v.as_bytes()),
                    );
                    let case = format!("{sticky:?} {cookies:?} {sc:?} {cc:?} {tls}");
                    match answer {
                        CookieAnswer::Nothing => {
                            nothing += 1;
                            assert_eq!(after, before, "{case}");
                        }
                        CookieAnswer::Add {
                            set_cookie,
                            private,
                        } => {
                            adds += 1;
                            privates += usize::from(private);
                            let mut expected = before.clone();
                            expected.append(header::SET_COOKIE, set_cookie.clone());
                            if private {
                                expected.append(header::CACHE_CONTROL, PRIVATE);
                            }
                            assert_eq!(after, expected, "{case}");
                        }
                        CookieAnswer::Rewrite => {
                            rewrites += 1;
                            // Not what an addition would have left.
                            let mut added = before.clone();
                            if let Some(v) = &backend.set_cookie {
                                added.append(header::SET_COOKIE, v[usize::from(tls)].clone());
                            }
                            assert_ne!(after, before, "{case}");
                            assert_ne!(after, added, "{case}");
                            added.append(header::CACHE_CONTROL, PRIVATE);
                            assert_ne!(after, added, "{case}");
                        }
                    }
                }
            }
        }
        // Each outcome is reached (the map path is not the answer to all).
        assert!(adds > privates && privates > 0 && rewrites > 0 && nothing > 0);
    }

    #[test]
    fn cache_control_gets_private_unless_it_keeps_shared_caches_out() {
        let merged = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(header::CACHE_CONTROL, HeaderValue::from_str(v).unwrap());
            }
            no_shared_cache(&mut h);
            let all: Vec<&str> = h
                .get_all(header::CACHE_CONTROL)
                .iter()
                .map(|v| v.to_str().unwrap())
                .collect();
            all.join(" | ")
        };
        assert_eq!(merged(&[]), "private");
        assert_eq!(merged(&["max-age=5", "Private"]), "max-age=5 | Private");
        assert_eq!(merged(&["no-store"]), "no-store");
        // A quoted comma separates nothing; a qualified `private` keeps only
        // the fields it names from shared caches.
        assert_eq!(
            merged(&["public, no-cache=\"a,private\", S-Maxage=9, max-age=5"]),
            "no-cache=\"a,private\", max-age=5, private"
        );
        assert_eq!(
            merged(&["private=\"x-foo\"", "public"]),
            "private=\"x-foo\", private"
        );
        assert_eq!(
            merged(&["no-cache=\"a\\\",b\", max-age=1"]),
            "no-cache=\"a\\\",b\", max-age=1, private"
        );
        let d: Vec<&[u8]> = directives(b" a , ,b=\"x,y\" ,c").collect();
        assert_eq!(d, [&b"a"[..], b"b=\"x,y\"", b"c"]);
    }

    #[test]
    fn source_binds_and_rebinds() {
        let sticky = StickyPolicy::Source {
            ttl: std::time::Duration::from_secs(3600),
        };
        let (_t, r) = route(sticky.clone());
        let a = read(&r, &sticky, &HeaderMap::new(), CLIENT);
        assert!(a.pinned.is_none());
        let mut h = HeaderMap::new();
        respond(&r, &sticky, &a, &r.backends.all()[2], false, &mut h);
        assert!(h.is_empty());
        let a = read(&r, &sticky, &HeaderMap::new(), CLIENT);
        assert_eq!(a.pinned.as_ref().unwrap().addr.port(), 9002);
        assert_eq!(r.state.bindings_len(), 1);
        // Its backend could not take a request (full, or failed it): the one
        // that answered instead gets the binding.
        respond(&r, &sticky, &a, &r.backends.all()[0], false, &mut h);
        let a = read(&r, &sticky, &HeaderMap::new(), CLIENT);
        assert_eq!(a.pinned.unwrap().addr.port(), 9000);
        assert_eq!(r.state.bindings_len(), 1);
    }
}
