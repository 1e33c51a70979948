//! Request gates and header rules a route may carry (`ipallowlist`, `basicauth`,
//! `headers`): compiled data only. The proxy's `middleware.rs` enforces them;
//! nothing here verifies a password or touches a request, and a route that sets
//! none of them holds three `None`s in its [`crate::Policy`].

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::Mutex;

use aws_lc_rs::hmac;
use http::{HeaderName, HeaderValue};
use ipnet::IpNet;

/// `ipallowlist`: which client addresses may use the route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpAllowList {
    /// Canonical ranges (an IPv4-mapped IPv6 range is written as IPv4).
    pub ranges: Vec<IpNet>,
    /// `0`: the client address (after the PROXY protocol). `n > 0`: the `n`-th
    /// `X-Forwarded-For` entry from the right, taken only from a peer in the
    /// entrypoint's `forwarded_trusted` (Traefik's `ipStrategy.depth`).
    pub depth: u32,
}

impl IpAllowList {
    /// Is `ip` in one of the ranges? IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`)
    /// are compared as the IPv4 address they carry.
    #[inline]
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.ranges.iter().any(|r| r.contains(&ip))
    }
}

/// A password hash from an htpasswd line, in a form Traefik accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PasswordHash {
    /// `$2y$`, `$2b$` or `$2a$` bcrypt, kept as written.
    Bcrypt(String),
    /// `{SHA}` + base64 of the SHA-1 of the password.
    Sha1([u8; 20]),
    /// Apache's `$apr1$salt$hash` (MD5-based, iterated 1000 times).
    Apr1 { salt: String, hash: String },
}

/// How many verified credentials a route remembers (bcrypt is slow by design:
/// a logged-in client must not pay for it on every request).
pub const AUTH_CACHE_MAX: usize = 1024;

/// Credentials already verified for one route: a keyed hash (HMAC-SHA-256 under
/// a random per-route key) of the Basic token (the `Authorization` value after
/// `Basic `), never the password. Only successes go in, and at most [`AUTH_CACHE_MAX`] of them (the
/// set is emptied when full), so wrong passwords cannot grow it.
pub struct AuthCache {
    key: hmac::Key,
    seen: Mutex<HashSet<[u8; 32]>>,
}

impl AuthCache {
    pub fn new() -> Self {
        let mut secret = [0u8; 32];
        if aws_lc_rs::rand::fill(&mut secret).is_err() {
            // A fixed key would still only hold hashes of verified credentials.
            secret = [0x5a; 32];
        }
        AuthCache {
            key: hmac::Key::new(hmac::HMAC_SHA256, &secret),
            seen: Mutex::new(HashSet::new()),
        }
    }

    fn digest(&self, credential: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.key, credential);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Was this exact Basic token verified before?
    pub fn contains(&self, credential: &[u8]) -> bool {
        let d = self.digest(credential);
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&d)
    }

    /// Remembers a verified Basic token.
    pub fn insert(&self, credential: &[u8]) {
        let d = self.digest(credential);
        let mut seen = self
            .seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if seen.len() >= AUTH_CACHE_MAX {
            seen.clear();
        }
        seen.insert(d);
    }

    /// Credentials held (the tests check the cap).
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }
}

impl Default for AuthCache {
    fn default() -> Self {
        Self::new()
    }
}

/// `basicauth`: HTTP Basic authentication (RFC 7617) against htpasswd lines.
pub struct BasicAuth {
    /// User names with their hashes, in the order given.
    pub users: Vec<(String, PasswordHash)>,
    pub realm: String,
    /// `Basic realm="..."`, precomputed for 401 answers.
    pub challenge: HeaderValue,
    /// Strip `Authorization` before forwarding.
    pub remove_header: bool,
    pub cache: AuthCache,
}

impl BasicAuth {
    /// `realm` must already be a valid quoted-string content (no `"`, `\` or
    /// control characters): the config parser checks it.
    pub fn new(users: Vec<(String, PasswordHash)>, realm: &str, remove_header: bool) -> Self {
        let challenge = HeaderValue::try_from(format!("Basic realm=\"{realm}\""))
            .unwrap_or_else(|_| HeaderValue::from_static("Basic realm=\"wharf\""));
        BasicAuth {
            users,
            realm: realm.to_string(),
            challenge,
            remove_header,
            cache: AuthCache::new(),
        }
    }

    pub fn user(&self, name: &str) -> Option<&PasswordHash> {
        self.users.iter().find(|(u, _)| u == name).map(|(_, h)| h)
    }
}

impl std::fmt::Debug for BasicAuth {
    /// User names only: hashes stay out of logs.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field(
                "users",
                &self.users.iter().map(|(u, _)| u).collect::<Vec<_>>(),
            )
            .field("realm", &self.realm)
            .field("remove_header", &self.remove_header)
            .finish_non_exhaustive()
    }
}

impl PartialEq for BasicAuth {
    fn eq(&self, o: &Self) -> bool {
        self.users == o.users && self.realm == o.realm && self.remove_header == o.remove_header
    }
}

impl Eq for BasicAuth {}

/// `headers`: fields set (`Some`) or removed (`None`) on the request before it
/// is forwarded and on the response before it is sent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HeaderRules {
    pub request: Vec<(HeaderName, Option<HeaderValue>)>,
    pub response: Vec<(HeaderName, Option<HeaderValue>)>,
}

impl HeaderRules {
    /// Applies one side's rules.
    #[inline]
    pub fn apply(rules: &[(HeaderName, Option<HeaderValue>)], headers: &mut http::HeaderMap) {
        for (name, value) in rules {
            match value {
                Some(v) => {
                    headers.insert(name.clone(), v.clone());
                }
                None => {
                    headers.remove(name);
                }
            }
        }
    }
}

/// Whether a header field (lower case) carries credentials, so that its value is
/// never shown (labels, problems, `/api/routes`).
pub fn is_secret_header(name: &str) -> bool {
    [
        "authorization",
        "cookie",
        "token",
        "secret",
        "password",
        // Also api-key, apikey, x-api-key.
        "key",
    ]
    .iter()
    .any(|w| name.contains(w))
}

/// What is shown in place of a secret value.
pub const REDACTED: &str = "<redacted>";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapped_v6_is_v4() {
        let l = IpAllowList {
            ranges: vec!["10.0.0.0/8".parse().unwrap()],
            depth: 0,
        };
        assert!(l.allows("10.1.2.3".parse().unwrap()));
        assert!(l.allows("::ffff:10.1.2.3".parse().unwrap()));
        assert!(!l.allows("11.1.2.3".parse().unwrap()));
        assert!(!l.allows("::1".parse().unwrap()));
    }

    #[test]
    fn cache_holds_successes_and_stays_bounded() {
        let c = AuthCache::new();
        assert!(!c.contains(b"Basic YTpi"));
        c.insert(b"Basic YTpi");
        assert!(c.contains(b"Basic YTpi"));
        assert!(!c.contains(b"Basic YTpj"));
        for i in 0..(AUTH_CACHE_MAX * 3) {
            c.insert(format!("Basic {i}").as_bytes());
        }
        assert!(c.len() <= AUTH_CACHE_MAX);
    }
}
