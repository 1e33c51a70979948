//! Session affinity: backend tokens, and the table of source-address bindings.
//!
//! A backend's token is a keyed MAC (HMAC-SHA256 under `[sticky] secret`,
//! truncated to 96 bits) of a stable identity of the backend: the swarm task slot
//! (`service.slot`), the container name, or the address of a file route's backend.
//! It reveals no address, cannot be forged to choose a backend, and every Wharf
//! replica with the same secret computes the same token for the same backend. The
//! tokens of a route are computed when a table is compiled; a request only looks
//! its token up in a map ([`crate::BackendSet::by_token`]): no cryptography on the
//! request path.

use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use aws_lc_rs::hmac;
use dashmap::DashMap;

/// How a route pins clients to backends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StickyPolicy {
    Cookie(CookieSticky),
    /// The client address (after the PROXY protocol and `forwarded_trusted`)
    /// bound to a backend while it stays healthy, forgotten after `ttl` idle.
    Source {
        ttl: Duration,
    },
}

impl StickyPolicy {
    pub fn as_str(&self) -> &'static str {
        match self {
            StickyPolicy::Cookie(_) => "cookie",
            StickyPolicy::Source { .. } => "source",
        }
    }
}

/// Cookie stickiness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CookieSticky {
    pub name: Box<str>,
    /// `prefix` mode: the application's own cookie carries the token
    /// (`NAME=<token>~<value>`); otherwise Wharf inserts a cookie of its own.
    pub prefix: bool,
    /// `Max-Age` in seconds; `None`: a session cookie.
    pub max_age: Option<u64>,
}

/// Characters of a token in its cookie form (base64url of 12 bytes, no padding).
pub const TOKEN_LEN: usize = 16;
/// Separates the token from the application's value in `prefix` mode (as
/// HAProxy's `cookie ... prefix` does).
pub const PREFIX_SEPARATOR: u8 = b'~';

/// Keys the backend tokens.
pub struct StickyKey {
    key: hmac::Key,
    /// Generated at start (no `[sticky] secret`): replicas disagree.
    pub generated: bool,
    /// The control plane said so in the log.
    pub warned: std::sync::atomic::AtomicBool,
}

impl fmt::Debug for StickyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StickyKey")
            .field("generated", &self.generated)
            .finish_non_exhaustive()
    }
}

impl StickyKey {
    pub fn new(secret: &[u8]) -> Self {
        StickyKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
            generated: false,
            warned: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// A random key for this process only.
    pub fn random() -> Self {
        let mut secret = [0u8; 32];
        // The system RNG does not fail on Linux; should it, the fallback is still
        // unpredictable enough that tokens cannot be guessed offline.
        if aws_lc_rs::rand::fill(&mut secret).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos();
            secret[..16].copy_from_slice(&t.to_le_bytes());
            secret[16..24].copy_from_slice(&fastrand::u64(..).to_le_bytes());
        }
        StickyKey {
            generated: true,
            ..StickyKey::new(&secret)
        }
    }

    /// The token of a backend identity.
    pub fn token(&self, identity: &str) -> Token {
        let mut ctx = hmac::Context::with_key(&self.key);
        // Domain separation, and a version so a future format cannot collide.
        ctx.update(b"wharf-sticky-v1\0");
        ctx.update(identity.as_bytes());
        let tag = ctx.sign();
        let mut mac = [0u8; 12];
        mac.copy_from_slice(&tag.as_ref()[..12]);
        Token { mac }
    }
}

/// A backend's token.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token {
    mac: [u8; 12],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.text();
        f.write_str(std::str::from_utf8(&text).unwrap_or("?"))
    }
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

fn b64_value(c: u8) -> Option<u32> {
    Some(match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'-' => 62,
        b'_' => 63,
        _ => return None,
    } as u32)
}

impl Token {
    /// The cookie form: 16 base64url characters.
    pub fn text(&self) -> [u8; TOKEN_LEN] {
        let mut out = [0u8; TOKEN_LEN];
        for (i, chunk) in self.mac.chunks_exact(3).enumerate() {
            let n = u32::from(chunk[0]) << 16 | u32::from(chunk[1]) << 8 | u32::from(chunk[2]);
            for j in 0..4 {
                out[i * 4 + j] = B64[(n >> (18 - 6 * j) & 63) as usize];
            }
        }
        out
    }

    /// Parses the cookie form; anything but exactly 16 base64url characters is
    /// `None`.
    #[inline]
    pub fn parse(s: &[u8]) -> Option<Token> {
        if s.len() != TOKEN_LEN {
            return None;
        }
        let mut mac = [0u8; 12];
        for (i, chunk) in s.chunks_exact(4).enumerate() {
            let mut n = 0u32;
            for c in chunk {
                n = n << 6 | b64_value(*c)?;
            }
            mac[i * 3] = (n >> 16) as u8;
            mac[i * 3 + 1] = (n >> 8) as u8;
            mac[i * 3 + 2] = n as u8;
        }
        Some(Token { mac })
    }

    /// The first 64 bits, as a map key.
    #[inline]
    pub fn id(&self) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.mac[..8]);
        u64::from_le_bytes(b)
    }
}

/// Seconds and nanoseconds on one monotonic clock shared by the affinity and
/// rate-limit state (both outlive table swaps, so they cannot use a table's
/// clock).
pub fn now_nanos() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    let base = *BASE.get_or_init(Instant::now);
    // Offset by a second so that 0 always lies in the past.
    base.elapsed().as_nanos() as u64 + 1_000_000_000
}

/// Source bindings kept per route at most (about 32 bytes each): a hard cap.
/// Past it, the idle ones are forgotten first, then the least recently used
/// quarter; a client that finds no room is not bound (it keeps its rendezvous
/// pick).
pub const MAX_BINDINGS: usize = 1 << 17;

/// Client address → backend token id, for `sticky = source`. Lives in the
/// route's [`crate::RouteState`], so bindings survive table swaps.
#[derive(Debug, Default)]
pub struct Bindings {
    map: DashMap<u128, Binding, ahash::RandomState>,
    /// Bindings held plus slots reserved by inserts in flight: never above
    /// [`MAX_BINDINGS`], so neither is the map.
    len: AtomicUsize,
    evicting: std::sync::atomic::AtomicBool,
    /// The second (on [`now_secs`]'s clock) of the last sweep: at most one per
    /// second, so a full table of bindings all in use costs one sweep, not one
    /// per new client.
    swept: AtomicU32,
    #[cfg(test)]
    sweeps: AtomicUsize,
}

#[derive(Debug)]
struct Binding {
    id: u64,
    /// Seconds on [`now_nanos`]'s clock.
    last: AtomicU32,
}

/// The client a source address stands for: an IPv4 address, or an IPv6 /64 (one
/// subscriber's network: a host picks any address in it at will, so keying on
/// the full address would let one client be many).
pub fn client_key(ip: IpAddr) -> u128 {
    match ip.to_canonical() {
        IpAddr::V4(a) => u128::from(a.to_ipv6_mapped()),
        IpAddr::V6(a) => u128::from(a) & !((1u128 << 64) - 1),
    }
}

impl Bindings {
    /// The backend token id bound to `client`, if the binding has not been idle
    /// for `ttl`; a hit counts as use.
    #[inline]
    pub fn get(&self, client: IpAddr, ttl: Duration, now_secs: u32) -> Option<u64> {
        let b = self.map.get(&client_key(client))?;
        let last = b.last.load(Ordering::Relaxed);
        if now_secs.saturating_sub(last) as u64 > ttl.as_secs() {
            return None;
        }
        if last != now_secs {
            b.last.store(now_secs, Ordering::Relaxed);
        }
        Some(b.id)
    }

    /// Binds `client` to a backend token id. A new client on a full table that
    /// no sweep can make room for is not bound: it keeps its rendezvous pick.
    pub fn bind(&self, client: IpAddr, id: u64, ttl: Duration, now_secs: u32) {
        let key = client_key(client);
        if let Some(mut b) = self.map.get_mut(&key) {
            b.id = id;
            b.last.store(now_secs, Ordering::Relaxed);
            return;
        }
        if !self.reserve(ttl, now_secs) {
            return;
        }
        let fresh = Binding {
            id,
            last: AtomicU32::new(now_secs),
        };
        if self.map.insert(key, fresh).is_some() {
            // A concurrent bind of the same client inserted it first.
            self.len.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes a slot under the cap, sweeping once if there is none.
    fn reserve(&self, ttl: Duration, now_secs: u32) -> bool {
        let take = || {
            self.len
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                    (n < MAX_BINDINGS).then_some(n + 1)
                })
                .is_ok()
        };
        take() || (self.evict(ttl, now_secs) && take())
    }

    /// Forgets idle bindings; if that frees less than a quarter, also the least
    /// recently used (by a cut-off sampled from the table). At most one sweep a
    /// second and one at a time, so the work is amortised over many inserts;
    /// `false` when no sweep ran or it freed nothing.
    fn evict(&self, ttl: Duration, now_secs: u32) -> bool {
        if self.swept.load(Ordering::Relaxed) == now_secs {
            return false;
        }
        // One sweep at a time; an insert that races it finds no room meanwhile.
        if self.evicting.swap(true, Ordering::Acquire) {
            return false;
        }
        self.swept.store(now_secs, Ordering::Relaxed);
        #[cfg(test)]
        self.sweeps.fetch_add(1, Ordering::Relaxed);
        let ttl = ttl.as_secs().min(u32::MAX as u64) as u32;
        let mut cutoff = now_secs.saturating_sub(ttl);
        let mut sample: Vec<u32> = self
            .map
            .iter()
            .step_by((MAX_BINDINGS / 256).max(1))
            .map(|b| b.last.load(Ordering::Relaxed))
            .collect();
        sample.sort_unstable();
        if let Some(q) = sample.get(sample.len() / 4) {
            // Never this second's bindings: a flood of new clients must
            // not wipe the table (when they alone fill it, the newest are
            // the ones not stored).
            cutoff = cutoff.max((*q + 1).min(now_secs));
        }
        let mut freed = 0;
        self.map.retain(|_, b| {
            let keep = b.last.load(Ordering::Relaxed) >= cutoff;
            freed += usize::from(!keep);
            keep
        });
        // Not a store of the map's length: inserts in flight hold reservations.
        self.len.fetch_sub(freed, Ordering::Relaxed);
        self.evicting.store(false, Ordering::Release);
        freed > 0
    }

    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the table holds now (entries and control bytes of its capacity).
    pub fn approx_bytes(&self) -> usize {
        self.map.capacity() * (std::mem::size_of::<(u128, Binding)>() + 1)
    }
}

/// Seconds on [`now_nanos`]'s clock.
#[inline]
pub fn now_secs() -> u32 {
    (now_nanos() / 1_000_000_000) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_depend_on_key_and_identity() {
        let k = StickyKey::new(b"s3cret");
        let t = k.token("web.1");
        let text = t.text();
        assert!(text.iter().all(|c| B64.contains(c)));
        assert_eq!(Token::parse(&text), Some(t));
        // Same secret, same token (another replica, a restart).
        assert_eq!(StickyKey::new(b"s3cret").token("web.1"), t);
        assert_ne!(k.token("web.2"), t);
        assert_ne!(StickyKey::new(b"other").token("web.1"), t);
        assert!(StickyKey::random().generated);
        assert_ne!(StickyKey::random().token("web.1"), t);
        // Golden value: replicas running different builds must agree.
        assert_eq!(
            &text, b"FYGMDIDbfnNXWutX",
            "token format changed (HMAC-SHA256, base64url)"
        );
    }

    #[test]
    fn parse_rejects_anything_else() {
        let good = StickyKey::new(b"k").token("a").text();
        for bad in [
            &b""[..],
            &good[..15],
            b"AAAAAAAAAAAAAAAAA",
            b"AAAAAAAAAAAAAAA=",
            b"AAAAAAAAAAAAAA+/",
            b"AAAAAAAAAAAAAA~A",
        ] {
            assert_eq!(
                Token::parse(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn bindings_expire_when_idle_and_are_capped() {
        let b = Bindings::default();
        let ttl = Duration::from_secs(10);
        let c: IpAddr = "192.0.2.7".parse().unwrap();
        b.bind(c, 42, ttl, 100);
        assert_eq!(b.get(c, ttl, 105), Some(42));
        // The v4-mapped form is the same client.
        assert_eq!(
            b.get("::ffff:192.0.2.7".parse().unwrap(), ttl, 110),
            Some(42)
        );
        // Used at 110: still there at 120, gone after 10 idle seconds.
        assert_eq!(b.get(c, ttl, 120), Some(42));
        assert_eq!(b.get(c, ttl, 131), None);

        let b = Bindings::default();
        let ttl = Duration::from_secs(3 * 3600);
        for i in 0..(MAX_BINDINGS as u32 * 4) {
            let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
            b.bind(ip, u64::from(i), ttl, 1000 + i / 1000);
            assert!(b.len() <= MAX_BINDINGS);
        }
        // The most recent client is still bound.
        let last = IpAddr::V4(std::net::Ipv4Addr::from(
            0x0a00_0000 + MAX_BINDINGS as u32 * 4 - 1,
        ));
        assert!(b.get(last, ttl, 2000).is_some());
        assert!(b.approx_bytes() < 16 << 20, "{}", b.approx_bytes());
        // Each sweep freed about a quarter: a few dozen for 3 × the cap.
        let sweeps = b.sweeps.load(Ordering::Relaxed);
        assert!((4..=40).contains(&sweeps), "{sweeps} sweeps");
    }

    #[test]
    fn a_flood_in_one_second_never_exceeds_the_cap_nor_sweeps_per_insert() {
        let b = Bindings::default();
        let ttl = Duration::from_secs(3 * 3600);
        let ip = |i: u32| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i));
        let now = 500;
        let n = MAX_BINDINGS as u32 * 2;
        for i in 0..n {
            b.bind(ip(i), u64::from(i), ttl, now);
            assert!(b.len() <= MAX_BINDINGS);
        }
        assert_eq!(b.map.len(), MAX_BINDINGS);
        assert_eq!(b.len(), MAX_BINDINGS);
        // Every binding is of this second: nothing could be evicted, so the
        // clients past the cap were not bound (they keep their rendezvous
        // pick), and the table was swept once, not once per insert.
        assert_eq!(b.sweeps.load(Ordering::Relaxed), 1);
        assert_eq!(b.get(ip(0), ttl, now), Some(0));
        assert_eq!(b.get(ip(n - 1), ttl, now), None);
        // A client already bound still moves, full table or not.
        b.bind(ip(1), 99, ttl, now);
        assert_eq!(b.get(ip(1), ttl, now), Some(99));
        // The next second, a sweep makes room for a new client.
        b.bind(ip(n), 7, ttl, now + 1);
        assert_eq!(b.get(ip(n), ttl, now + 1), Some(7));
        assert!(b.len() <= MAX_BINDINGS && b.map.len() <= MAX_BINDINGS);
        assert_eq!(b.sweeps.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn concurrent_binds_stay_under_the_cap() {
        let b = std::sync::Arc::new(Bindings::default());
        let ttl = Duration::from_secs(3 * 3600);
        let per = MAX_BINDINGS as u32 / 2 + 1000;
        let threads: Vec<_> = (0..4u32)
            .map(|t| {
                let b = b.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        let ip = IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + t * per + i));
                        b.bind(ip, 1, ttl, 700);
                        assert!(b.len() <= MAX_BINDINGS);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(b.map.len(), MAX_BINDINGS);
        assert_eq!(b.len(), MAX_BINDINGS);
    }
}
