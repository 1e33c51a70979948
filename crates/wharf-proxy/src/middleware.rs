//! The route's request gates and header rules, as pipeline phases:
//!
//! - [`gate`] (request filter, may answer): `ipallowlist` (403), then
//!   `basicauth` (401 with `WWW-Authenticate`). It runs before any backend is
//!   picked, for HTTP/1.1, HTTP/2 and upgrade requests alike, so a WebSocket is
//!   gated like any request.
//! - [`rewrite_request`] (upstream request filter): drops `Authorization` when the
//!   route says `remove_header`, then the route's request header rules.
//! - [`rewrite_response`] (response filter): the route's response header rules.
//!
//! A route that sets none of them pays one `Option` check per phase. The policy
//! data (ranges, hashes, the verified-credential cache) is compiled into the
//! table (`wharf_table::middleware`); this module only reads it.

use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;

use base64::Engine as _;
use http::header::{self, HeaderMap};
use md5::{Digest as _, Md5};
use sha1::Sha1;
use tokio::sync::Semaphore;
use wharf_table::{BasicAuth, HeaderRules, IpAllowList, PasswordHash, Route};

use crate::error::ProxyError;
use crate::forward::ConnInfo;
use crate::pipeline::Head;

/// What the gate decided without waiting, or the bcrypt check it still needs.
pub enum Gate {
    Pass,
    Refuse(ProxyError),
    /// A credential not in the cache whose hash is bcrypt: verified off the
    /// runtime ([`Gate::finish`]).
    Bcrypt(Pending),
}

/// A bcrypt verification still to run, and what to remember if it passes.
pub struct Pending {
    token: String,
    password: String,
    hash: String,
}

impl Gate {
    /// Runs the pending bcrypt check, if any. The caller boxes this future, so
    /// that the request's future does not carry its state on routes that never
    /// wait.
    pub async fn finish(self, route: &Route) -> Result<(), ProxyError> {
        match self {
            Gate::Pass => Ok(()),
            Gate::Refuse(e) => Err(e),
            Gate::Bcrypt(p) => {
                let Some(auth) = &route.policy.basicauth else {
                    return Ok(());
                };
                if bcrypt_verify(p.password, p.hash).await {
                    auth.cache.insert(p.token.as_bytes());
                    Ok(())
                } else {
                    Err(ProxyError::Unauthorized(auth.challenge.clone()))
                }
            }
        }
    }
}

/// Request filter: the route's allow-list, then its basic authentication.
/// Synchronous for the allow-list, a cached credential and the fast hashes;
/// only a bcrypt hash not yet verified is left to [`Gate::finish`].
#[inline]
pub fn gate(conn: &ConnInfo, head: &Head<'_>, route: &Route) -> Gate {
    if let Some(list) = &route.policy.ipallowlist {
        if !allowed(list, conn, head.headers) {
            return Gate::Refuse(ProxyError::Forbidden);
        }
    }
    if let Some(auth) = &route.policy.basicauth {
        return match check(auth, head.headers) {
            Check::Ok => Gate::Pass,
            Check::Bad => Gate::Refuse(ProxyError::Unauthorized(auth.challenge.clone())),
            Check::Bcrypt(p) => Gate::Bcrypt(p),
        };
    }
    Gate::Pass
}

/// Whether the client may use a route with this allow-list. Depth 0: the
/// connection's client address (after the PROXY protocol). Depth n: the n-th
/// `X-Forwarded-For` entry from the right, only when the peer is in the
/// entrypoint's `forwarded_trusted`; from any other peer the header is the
/// client's own word, so its address is used. A trusted peer that sent too few
/// entries (or a malformed one) is refused: failing closed.
pub fn allowed(list: &IpAllowList, conn: &ConnInfo, headers: &HeaderMap) -> bool {
    match client_for(list.depth, conn.info.trusted, conn.client, headers) {
        Some(ip) => list.allows(ip),
        None => false,
    }
}

/// The address an allow-list of `depth` checks; `None`: none can be told.
pub fn client_for(
    depth: u32,
    trusted: bool,
    client: SocketAddr,
    headers: &HeaderMap,
) -> Option<IpAddr> {
    if depth == 0 || !trusted {
        return Some(client.ip().to_canonical());
    }
    // Every X-Forwarded-For field, in order, is one list (RFC 9110 §5.3): walked
    // from the right, nothing collected. A field that is not text makes the
    // whole list unreadable (refused).
    let fields = headers.get_all(&crate::headers::X_FORWARDED_FOR);
    if fields.iter().any(|v| v.to_str().is_err()) {
        return None;
    }
    let entry = fields
        .iter()
        .rev()
        .flat_map(|v| v.to_str().unwrap_or_default().rsplit(','))
        .nth(depth as usize - 1)?;
    crate::pipeline::parse_forwarded_addr(entry.trim()).map(|ip| ip.to_canonical())
}

/// What a Basic credential check decided without waiting.
enum Check {
    Ok,
    Bad,
    Bcrypt(Pending),
}

/// Basic credentials checked against the route's users; verified credentials
/// are remembered (keyed hash of the base64 token alone: the scheme's case and
/// spacing are not part of it, and the decoder accepts one canonical spelling
/// per credential, so respellings of one header cannot flush the cache) and
/// bcrypt runs once per credential, not per request. A cache hit allocates
/// nothing. Two `Authorization` fields are refused: a backend reading the
/// other one would see an identity nobody verified.
fn check(auth: &BasicAuth, headers: &HeaderMap) -> Check {
    let mut all = headers.get_all(header::AUTHORIZATION).iter();
    let (Some(value), None) = (all.next(), all.next()) else {
        return Check::Bad;
    };
    let Some(token) = basic_token(value.as_bytes()) else {
        return Check::Bad;
    };
    if auth.cache.contains(token.as_bytes()) {
        return Check::Ok;
    }
    let Some((user, password)) = decode_basic(token) else {
        return Check::Bad;
    };
    let Some(hash) = auth.user(&user) else {
        return Check::Bad;
    };
    match hash {
        PasswordHash::Bcrypt(h) => Check::Bcrypt(Pending {
            token: token.to_string(),
            password,
            hash: h.clone(),
        }),
        other if verify(other, &password) => {
            auth.cache.insert(token.as_bytes());
            Check::Ok
        }
        _ => Check::Bad,
    }
}

/// bcrypt is slow by design (tens of milliseconds at cost 10): off the
/// runtime, and a few at a time so wrong passwords cannot take every thread.
async fn bcrypt_verify(password: String, hash: String) -> bool {
    let Ok(_permit) = bcrypt_slots().acquire().await else {
        return false;
    };
    tokio::task::spawn_blocking(move || bcrypt::verify(password, &hash).unwrap_or(false))
        .await
        .unwrap_or(false)
}

/// Concurrent bcrypt verifications at most: one per CPU.
fn bcrypt_slots() -> &'static Semaphore {
    static SLOTS: OnceLock<Semaphore> = OnceLock::new();
    SLOTS
        .get_or_init(|| Semaphore::new(std::thread::available_parallelism().map_or(2, |n| n.get())))
}

/// `Basic base64(user:password)` (RFC 7617 §2): the user and password.
#[cfg(test)]
fn basic_credentials(raw: &[u8]) -> Option<(String, String)> {
    decode_basic(basic_token(raw)?)
}

/// The base64 token of a `Basic` credential, trimmed.
fn basic_token(raw: &[u8]) -> Option<&str> {
    let s = std::str::from_utf8(raw).ok()?.trim();
    let (scheme, token) = s.split_once(' ')?;
    scheme.eq_ignore_ascii_case("basic").then_some(token.trim())
}

/// `user:password` from a Basic token (canonical base64 only).
fn decode_basic(token: &str) -> Option<(String, String)> {
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token)
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Checks `password` against one hash (bcrypt synchronously: the caller moves
/// it off the runtime).
pub fn verify(hash: &PasswordHash, password: &str) -> bool {
    match hash {
        PasswordHash::Bcrypt(h) => bcrypt::verify(password, h).unwrap_or(false),
        PasswordHash::Sha1(want) => {
            let got: [u8; 20] = Sha1::digest(password.as_bytes()).into();
            constant_time_eq(&got, want)
        }
        PasswordHash::Apr1 { salt, hash } => constant_time_eq(
            apr1(password.as_bytes(), salt.as_bytes()).as_bytes(),
            hash.as_bytes(),
        ),
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The 22-character hash part of Apache's `$apr1$salt$hash`: Poul-Henning
/// Kamp's FreeBSD MD5-crypt with the magic `$apr1$`, as in Apache Portable
/// Runtime `crypto/apr_md5.c` (`apr_md5_encode`): MD5 of password, magic and
/// salt, mixed with MD5(password, salt, password), then 1000 rounds, encoded
/// in crypt's base-64 alphabet in the byte order below.
pub fn apr1(password: &[u8], salt: &[u8]) -> String {
    const MAGIC: &[u8] = b"$apr1$";
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let salt = &salt[..salt.len().min(8)];
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut i = password.len();
    while i != 0 {
        if i & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        i >>= 1;
    }
    let mut fin: [u8; 16] = ctx.finalize().into();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(fin);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(fin);
        } else {
            c.update(password);
        }
        fin = c.finalize().into();
    }
    let mut out = String::with_capacity(22);
    let mut to64 = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let f = |i: usize| u32::from(fin[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        to64((f(a) << 16) | (f(b) << 8) | f(c), 4);
    }
    to64(f(11), 2);
    out
}

/// Upstream request filter: `Authorization` dropped when the route says so,
/// then the request header rules.
#[inline]
pub fn rewrite_request(route: &Route, headers: &mut HeaderMap) {
    if let Some(auth) = &route.policy.basicauth {
        if auth.remove_header {
            headers.remove(header::AUTHORIZATION);
        }
    }
    if let Some(rules) = &route.policy.headers {
        HeaderRules::apply(&rules.request, headers);
    }
}

/// Response filter: the response header rules.
#[inline]
pub fn rewrite_response(route: &Route, headers: &mut HeaderMap) {
    if let Some(rules) = &route.policy.headers {
        HeaderRules::apply(&rules.response, headers);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn apr1_known_vectors() {
        // `openssl passwd -apr1 -salt ...` output.
        assert_eq!(apr1(b"password", b"xxxxxxxx"), "dxHfLAsjHkDRmG83UXe8K0");
        assert_eq!(apr1(b"myPassword", b"r31....."), "HqJZimcKQFAMYayBlzkrA/");
    }

    #[test]
    fn sha1_and_credentials() {
        // htpasswd -nbs u password
        let h = PasswordHash::Sha1({
            let d = base64::engine::general_purpose::STANDARD
                .decode("W6ph5Mm5Pz8GgiULbPgzG37mj9g=")
                .unwrap();
            d.try_into().unwrap()
        });
        assert!(verify(&h, "password"));
        assert!(!verify(&h, "passwore"));
        assert_eq!(
            basic_credentials(b"Basic dTpwYXNzOndvcmQ="),
            Some(("u".into(), "pass:word".into()))
        );
        assert_eq!(
            basic_credentials(b"basic  dTpw"),
            Some(("u".into(), "p".into()))
        );
        assert_eq!(basic_credentials(b"Bearer dTpw"), None);
    }

    #[test]
    fn depth_reads_forwarded_for_from_trusted_peers_only() {
        let peer: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let mut h = HeaderMap::new();
        h.append(
            "x-forwarded-for",
            HeaderValue::from_static("1.1.1.1, 2.2.2.2"),
        );
        h.append("x-forwarded-for", HeaderValue::from_static("3.3.3.3"));
        let ip = |d, t| client_for(d, t, peer, &h).map(|i| i.to_string());
        assert_eq!(ip(0, true).as_deref(), Some("10.0.0.2"));
        assert_eq!(ip(1, true).as_deref(), Some("3.3.3.3"));
        assert_eq!(ip(2, true).as_deref(), Some("2.2.2.2"));
        assert_eq!(ip(3, true).as_deref(), Some("1.1.1.1"));
        assert_eq!(ip(4, true), None, "too few entries: refused");
        assert_eq!(ip(2, false).as_deref(), Some("10.0.0.2"), "untrusted peer");
        let mapped: SocketAddr = "[::ffff:10.0.0.9]:1".parse().unwrap();
        assert_eq!(
            client_for(0, false, mapped, &h)
                .map(|i| i.to_string())
                .as_deref(),
            Some("10.0.0.9")
        );
    }
}
