//! The table itself: compile once, look up many times.

use std::collections::HashMap;
use std::sync::Arc;

use crate::backend::{Backend, BackendKey, BackendRegistry, BackendSet};
use crate::route::{Route, RouteDef};
use crate::sticky::{CookieSticky, StickyPolicy, Token};

type Map<V> = HashMap<Box<str>, V, ahash::RandomState>;

/// A (host, path) pair claimed by two routes: the first keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    pub host: String,
    pub path: String,
    pub kept: Arc<str>,
    pub dropped: Arc<str>,
}

/// What compiling noticed; the control plane reports it.
#[derive(Debug, Default)]
pub struct CompileReport {
    pub conflicts: Vec<Conflict>,
}

/// An immutable routing table.
#[derive(Debug, Default)]
pub struct Table {
    exact: Map<Box<[Arc<Route>]>>,
    /// Keyed by the suffix after `*.`.
    wildcard: Map<Box<[Arc<Route>]>>,
    fallback: Box<[Arc<Route>]>,
    routes: Vec<Arc<Route>>,
}

impl Table {
    /// Compiles route definitions. Backend state is taken from `registry` by
    /// identity, and the registry forgets backends no route uses any more.
    pub fn compile(defs: Vec<RouteDef>, registry: &BackendRegistry) -> (Table, CompileReport) {
        let mut report = CompileReport::default();
        let generation = registry.begin();
        let mut routes = Vec::with_capacity(defs.len());
        let mut sticky_key = None;
        for def in defs {
            let sticky = def.policy.sticky.as_deref();
            let mut fresh = Vec::new();
            let mut serving = false;
            let backends = def
                .backends
                .iter()
                .map(|b| {
                    let key = BackendKey {
                        route: def.name.clone(),
                        addr: b.addr,
                    };
                    let (state, created) = registry.mark(key, b, generation);
                    if created {
                        fresh.push(state.clone());
                    } else {
                        // Held for a check the route no longer has: nothing
                        // else would let it in (the checker may never have
                        // seen it).
                        if def.policy.healthcheck.is_none() {
                            state.release_hold();
                        }
                        serving |= !b.draining && state.is_up();
                    }
                    let mut backend = Backend::new(b, state);
                    if let Some(sticky) = sticky {
                        let k = sticky_key.get_or_insert_with(|| registry.sticky_key());
                        let token = match &b.identity {
                            Some(id) => k.token(id),
                            None => k.token(&b.addr.to_string()),
                        };
                        backend.token = Some(token);
                        if let StickyPolicy::Cookie(c) = sticky {
                            backend.set_cookie = insert_cookie(c, &token);
                        }
                    }
                    Arc::new(backend)
                })
                .collect();
            // Health-gated start: a backend new to a checked route that is
            // serving already takes no request until its first check passes. A
            // route with nothing serving (a new route, Wharf's first table, every
            // backend down) lets its new backends in at once: holding them would
            // only turn a chance of success into a certain 503.
            if serving && def.policy.healthcheck.is_some() {
                for state in &fresh {
                    state.hold_for_first_check();
                }
            }
            let limit = def.policy.maxconn.map_or(0, |m| m.limit);
            let mut set = BackendSet::new(backends, def.balance, limit);
            if sticky.is_some() {
                set.index_tokens();
            }
            let state = registry.mark_route(&def.name, generation);
            routes.push(Arc::new(Route::new(def, set, state)));
        }
        registry.sweep(generation);

        // Group by host, keeping declaration order for conflict resolution.
        let mut exact: Map<Vec<Arc<Route>>> = Map::default();
        let mut wildcard: Map<Vec<Arc<Route>>> = Map::default();
        let mut fallback: Vec<Arc<Route>> = Vec::new();
        for route in &routes {
            for host in &route.hosts {
                let bucket = if host == "*" {
                    &mut fallback
                } else if let Some(suffix) = host.strip_prefix("*.") {
                    wildcard.entry(suffix.into()).or_default()
                } else {
                    exact.entry(host.as_str().into()).or_default()
                };
                // Same host and path on disjoint entrypoints (public vs internal)
                // never collide.
                let clash = |r: &&Arc<Route>| {
                    r.path == route.path && r.entrypoints.overlaps(route.entrypoints)
                };
                if let Some(kept) = bucket.iter().find(clash) {
                    report.conflicts.push(Conflict {
                        host: host.clone(),
                        path: route.path.clone(),
                        kept: kept.name.clone(),
                        dropped: route.name.clone(),
                    });
                    continue;
                }
                bucket.push(route.clone());
            }
        }
        let finish = |mut v: Vec<Arc<Route>>| {
            // Longest prefix first; the sort is stable so ties keep declaration order.
            v.sort_by_key(|r| std::cmp::Reverse(r.path.len()));
            v.into_boxed_slice()
        };
        let table = Table {
            exact: exact.into_iter().map(|(k, v)| (k, finish(v))).collect(),
            wildcard: wildcard.into_iter().map(|(k, v)| (k, finish(v))).collect(),
            fallback: finish(fallback),
            routes,
        };
        (table, report)
    }

    /// Finds the route for a normalised host and a path on entrypoint `ep`: exact
    /// host first, then `*.suffix`, then `*`; within each, the longest path prefix
    /// served on that entrypoint, matched on segment boundaries (`/api` is not a
    /// prefix of `/apix`; see `path.rs`).
    #[inline]
    pub fn find(&self, host: &str, path: &str, ep: usize) -> Option<&Arc<Route>> {
        let pick = |routes: &'_ [Arc<Route>]| -> Option<usize> {
            routes.iter().position(|r| {
                r.entrypoints.contains(ep) && crate::path::prefix_matches(&r.path, path)
            })
        };
        if let Some(rs) = self.exact.get(host) {
            if let Some(i) = pick(rs) {
                return rs.get(i);
            }
        }
        if let Some((_, suffix)) = host.split_once('.') {
            if let Some(rs) = self.wildcard.get(suffix) {
                if let Some(i) = pick(rs) {
                    return rs.get(i);
                }
            }
        }
        pick(&self.fallback).and_then(|i| self.fallback.get(i))
    }

    /// Every route, in declaration order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    pub fn len(&self) -> usize {
        self.routes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }
}

/// The `Set-Cookie` values of insert mode, `[plain, secure]`: `HttpOnly`,
/// `SameSite=Lax`, path `/`, `Secure` when the client came over TLS, and
/// `Max-Age` when a ttl is set (else a session cookie). Prefix mode sets none of
/// its own.
fn insert_cookie(c: &CookieSticky, token: &Token) -> Option<Box<[http::HeaderValue; 2]>> {
    if c.prefix {
        return None;
    }
    let text = token.text();
    let value = std::str::from_utf8(&text).ok()?;
    let mut plain = format!("{}={value}; Path=/; HttpOnly; SameSite=Lax", c.name);
    if let Some(age) = c.max_age {
        plain.push_str(&format!("; Max-Age={age}"));
    }
    let secure = format!("{plain}; Secure");
    Some(Box::new([
        http::HeaderValue::from_str(&plain).ok()?,
        http::HeaderValue::from_str(&secure).ok()?,
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{BackendDef, Balance, Scheme};
    use crate::route::{EntrypointMask, Policy};
    use std::net::SocketAddr;

    fn def(name: &str, hosts: &[&str], path: &str, port: u16) -> RouteDef {
        RouteDef {
            name: name.into(),
            source: "test".into(),
            hosts: hosts.iter().map(|h| h.to_string()).collect(),
            path: path.into(),
            entrypoints: EntrypointMask::ALL,
            balance: Balance::RoundRobin,
            backends: vec![BackendDef {
                addr: SocketAddr::from(([127, 0, 0, 1], port)),
                scheme: Scheme::Http,
                draining: false,
                identity: None,
            }],
            policy: Policy::default(),
        }
    }

    fn name<'a>(t: &'a Table, host: &str, path: &str) -> Option<&'a str> {
        t.find(host, path, 0).map(|r| &*r.name)
    }

    #[test]
    fn exact_wildcard_default_and_longest_prefix() {
        let reg = BackendRegistry::new();
        let (t, rep) = Table::compile(
            vec![
                def("root", &["a.example.org"], "/", 1),
                def("api", &["a.example.org"], "/api", 2),
                def("wild", &["*.example.org"], "/", 3),
                def("any", &["*"], "/", 4),
            ],
            &reg,
        );
        assert!(rep.conflicts.is_empty());
        assert_eq!(name(&t, "a.example.org", "/x"), Some("root"));
        assert_eq!(name(&t, "a.example.org", "/api/v1"), Some("api"));
        assert_eq!(name(&t, "b.example.org", "/"), Some("wild"));
        assert_eq!(name(&t, "x.b.example.org", "/"), Some("any"));
        assert_eq!(name(&t, "example.org", "/"), Some("any"));
        assert_eq!(name(&t, "other", "/"), Some("any"));
    }

    #[test]
    fn unmatched_path_falls_through_to_wildcard_then_none() {
        let reg = BackendRegistry::new();
        let (t, _) = Table::compile(
            vec![
                def("api", &["a.example.org"], "/api", 1),
                def("wild", &["*.example.org"], "/", 2),
            ],
            &reg,
        );
        assert_eq!(name(&t, "a.example.org", "/other"), Some("wild"));
        assert_eq!(name(&t, "a.other.org", "/"), None);
    }

    #[test]
    fn entrypoint_filter() {
        let reg = BackendRegistry::new();
        let mut d = def("only1", &["h"], "/", 1);
        d.entrypoints = EntrypointMask::none().with(1);
        let (t, _) = Table::compile(vec![d, def("all", &["*"], "/", 2)], &reg);
        assert_eq!(t.find("h", "/", 0).map(|r| &*r.name), Some("all"));
        assert_eq!(t.find("h", "/", 1).map(|r| &*r.name), Some("only1"));
    }

    #[test]
    fn conflicts_keep_first() {
        let reg = BackendRegistry::new();
        let (t, rep) = Table::compile(
            vec![def("one", &["h", "x"], "/", 1), def("two", &["h"], "/", 2)],
            &reg,
        );
        assert_eq!(name(&t, "h", "/"), Some("one"));
        assert_eq!(rep.conflicts.len(), 1);
        assert_eq!(&*rep.conflicts[0].dropped, "two");
    }

    #[test]
    fn same_host_on_disjoint_entrypoints_is_no_conflict() {
        let reg = BackendRegistry::new();
        let mut public = def("public", &["h"], "/", 1);
        public.entrypoints = EntrypointMask::none().with(0);
        let mut internal = def("internal", &["h"], "/", 2);
        internal.entrypoints = EntrypointMask::none().with(1);
        let (t, rep) = Table::compile(vec![public, internal], &reg);
        assert!(rep.conflicts.is_empty());
        assert_eq!(t.find("h", "/", 0).map(|r| &*r.name), Some("public"));
        assert_eq!(t.find("h", "/", 1).map(|r| &*r.name), Some("internal"));
    }

    #[test]
    fn state_survives_recompile_by_identity() {
        let reg = BackendRegistry::new();
        let (t1, _) = Table::compile(vec![def("r", &["h"], "/", 1)], &reg);
        let s1 = t1.routes()[0].backends.all()[0].state.clone();
        s1.set_up(false);
        // Another route changes; "r" keeps its backend state.
        let (t2, _) = Table::compile(
            vec![def("r", &["h"], "/", 1), def("new", &["n"], "/", 9)],
            &reg,
        );
        let s2 = &t2.routes()[0].backends.all()[0].state;
        assert!(Arc::ptr_eq(&s1, s2));
        assert!(!s2.is_up());
        // A backend that disappears is forgotten.
        let (_t3, _) = Table::compile(vec![def("new", &["n"], "/", 9)], &reg);
        assert_eq!(reg.len(), 1);
    }

    fn backend(port: u16) -> BackendDef {
        BackendDef {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            scheme: Scheme::Http,
            draining: false,
            identity: None,
        }
    }

    fn checked(ports: &[u16]) -> RouteDef {
        let mut d = def("r", &["h"], "/", ports[0]);
        d.backends = ports.iter().map(|p| backend(*p)).collect();
        d.policy.healthcheck = Some(Arc::new(crate::HealthCheck::default()));
        d
    }

    fn usable(t: &Table) -> Vec<u16> {
        let mut v: Vec<u16> = t.routes()[0]
            .backends
            .all()
            .iter()
            .filter(|b| b.usable())
            .map(|b| b.addr.port())
            .collect();
        v.sort_unstable();
        v
    }

    fn pass() -> crate::LastCheck {
        crate::LastCheck {
            at: std::time::SystemTime::now(),
            status: Some(200),
            latency: std::time::Duration::ZERO,
            error: None,
        }
    }

    #[test]
    fn a_new_backend_of_a_serving_checked_route_waits_for_its_first_check() {
        let reg = BackendRegistry::new();
        // The first table: nothing serves yet, so nothing is held.
        let (t1, _) = Table::compile(vec![checked(&[1, 2])], &reg);
        assert_eq!(usable(&t1), [1, 2]);
        // A new task beside serving ones is held until its first check passes.
        let (t2, _) = Table::compile(vec![checked(&[1, 2, 3])], &reg);
        assert_eq!(usable(&t2), [1, 2]);
        let new = t2.routes()[0].backends.all()[2].state.clone();
        assert!(new.is_pending());
        let hc = crate::HealthCheck::default();
        assert!(matches!(
            new.record_check(&hc, pass()),
            Some(crate::Transition::Up { .. })
        ));
        assert_eq!(usable(&t2), [1, 2, 3]);
        // Failing first checks (an application warming up) keep it out, the
        // first one logged; its first passing check lets it in.
        let (t3, _) = Table::compile(vec![checked(&[1, 2, 3, 4])], &reg);
        let four = t3.routes()[0].backends.all()[3].state.clone();
        let mut fail = pass();
        fail.error = Some("status 503".into());
        assert!(matches!(
            four.record_check(&hc, fail.clone()),
            Some(crate::Transition::Down { .. })
        ));
        assert_eq!(four.record_check(&hc, fail), None);
        assert!(four.is_pending());
        assert_eq!(usable(&t3), [1, 2, 3]);
        assert!(four.record_check(&hc, pass()).is_some());
        assert!(!four.is_pending());
        assert_eq!(usable(&t3), [1, 2, 3, 4]);
    }

    #[test]
    fn a_held_backend_is_released_when_its_route_loses_its_check() {
        let reg = BackendRegistry::new();
        let (_t1, _) = Table::compile(vec![checked(&[1])], &reg);
        let (t2, _) = Table::compile(vec![checked(&[1, 2])], &reg);
        assert_eq!(usable(&t2), [1]);
        // The check is removed before any checker saw the new backend.
        let mut plain = checked(&[1, 2]);
        plain.policy.healthcheck = None;
        let (t3, _) = Table::compile(vec![plain], &reg);
        assert_eq!(usable(&t3), [1, 2]);
        assert!(!t3.routes()[0].backends.all()[1].state.is_pending());
    }

    #[test]
    fn new_backends_are_not_held_without_a_check_or_anything_serving() {
        let reg = BackendRegistry::new();
        let mut plain = checked(&[1]);
        plain.policy.healthcheck = None;
        let (_t, _) = Table::compile(vec![plain.clone()], &reg);
        plain.backends.push(backend(2));
        let (t, _) = Table::compile(vec![plain], &reg);
        assert_eq!(usable(&t), [1, 2]);
        // Every serving backend down (or draining): the new one comes in at once.
        let reg = BackendRegistry::new();
        let (t1, _) = Table::compile(vec![checked(&[1])], &reg);
        t1.routes()[0].backends.all()[0].state.set_up(false);
        let (t2, _) = Table::compile(vec![checked(&[1, 2])], &reg);
        assert_eq!(usable(&t2), [2]);
        let mut draining = checked(&[2, 3]);
        draining.backends[0].draining = true;
        let (t3, _) = Table::compile(vec![draining], &reg);
        assert_eq!(usable(&t3), [3]);
    }
}
