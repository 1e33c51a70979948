//! The DNS provider against a real DNS server (tests/support) on 127.0.0.1: UDP, TCP, TTLs,
//! failures, truncation and the query budget, counted at the server.

mod support;

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::time::Duration;

use support::{ip, wait_for, TestDns, Transport, Zone};
use tokio::time::Instant;
use wharf_dns::{Answer, AnswerState, DnsError, DnsProvider, DnsSettings};

fn settings(server: &TestDns) -> DnsSettings {
    DnsSettings {
        nameservers: vec![server.addr],
        refresh: Duration::from_millis(300),
        hold_valid: Duration::from_millis(800),
        min_refresh: Duration::from_millis(100),
        max_queries_per_second: 1000,
        timeout: Duration::from_millis(200),
    }
}

fn names(list: &[&str]) -> BTreeSet<String> {
    list.iter().map(|s| (*s).to_owned()).collect()
}

fn answer(provider: &DnsProvider, name: &str) -> Answer {
    provider
        .answers()
        .get(name)
        .cloned()
        .expect("name is watched")
}

/// Waits until the answer of `name` satisfies `pred`.
async fn wait_answer(
    provider: &DnsProvider,
    name: &str,
    what: &str,
    pred: impl Fn(&Answer) -> bool,
) -> Answer {
    wait_for(Duration::from_secs(3), what, || {
        let answer = answer(provider, name);
        pred(&answer).then_some(answer)
    })
    .await
}

#[tokio::test]
async fn resolves_a_and_aaaa_sorted_and_deduplicated() {
    let server = TestDns::start().await;
    server.set(
        "web.test",
        Zone::Addrs {
            v4: vec!["10.0.0.2".parse().unwrap(), "10.0.0.1".parse().unwrap()],
            v6: vec!["fd00::1".parse().unwrap(), "fd00::1".parse().unwrap()],
            ttl: 600,
        },
    );
    let provider = DnsProvider::new(settings(&server)).unwrap();
    let mut changes = provider.subscribe();
    assert!(provider.answers().is_empty());
    assert_eq!(
        server.count("web.test"),
        0,
        "nothing is queried before set_names"
    );

    provider.set_names(names(&["web.test"]));
    assert_eq!(answer(&provider, "web.test").state, AnswerState::Pending);
    tokio::time::timeout(Duration::from_secs(3), changes.changed())
        .await
        .expect("a change is announced")
        .unwrap();

    let answer = answer(&provider, "web.test");
    assert_eq!(answer.state, AnswerState::Resolved);
    assert_eq!(
        answer.addrs,
        vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("fd00::1")]
    );
    assert!(answer.last_success.is_some());
    let log = server.log();
    assert!(log.iter().any(|q| q.record_type.to_string() == "A"));
    assert!(log.iter().any(|q| q.record_type.to_string() == "AAAA"));
    assert!(log.iter().all(|q| q.transport == Transport::Udp));
    // Queried as given: no search-domain suffix was ever tried.
    assert!(log.iter().all(|q| q.name == "web.test"), "{log:?}");
    let stats = provider.stats();
    assert!(stats.queries >= 2, "{stats:?}");
    assert_eq!(stats.names, 1);
    assert!(stats.changes >= 1);
}

#[tokio::test]
async fn changed_record_is_seen_at_the_next_refresh_despite_a_long_ttl() {
    let server = TestDns::start().await;
    // Docker's embedded DNS answers with TTL 600: the refresh (300 ms) must win.
    server.set("app.test", Zone::v4(&[[10, 0, 0, 1]], 600));
    let provider = DnsProvider::new(settings(&server)).unwrap();
    provider.set_names(names(&["app.test"]));
    wait_answer(&provider, "app.test", "first answer", |a| {
        a.state == AnswerState::Resolved
    })
    .await;

    let mut changes = provider.subscribe();
    changes.borrow_and_update();
    server.set("app.test", Zone::v4(&[[10, 0, 0, 7], [10, 0, 0, 5]], 600));
    let changed_at = Instant::now();
    tokio::time::timeout(Duration::from_secs(2), changes.changed())
        .await
        .expect("the new record is announced")
        .unwrap();
    // Within one refresh interval (+ scheduling slack), not after the TTL.
    assert!(changed_at.elapsed() < Duration::from_millis(800));
    assert_eq!(
        answer(&provider, "app.test").addrs,
        vec![ip("10.0.0.5"), ip("10.0.0.7")]
    );
}

#[tokio::test]
async fn a_nudge_re_resolves_before_the_refresh_but_not_before_the_floor() {
    let server = TestDns::start().await;
    server.set("tasks.web", Zone::v4(&[[10, 0, 0, 1]], 600));
    let provider = DnsProvider::new(DnsSettings {
        refresh: Duration::from_secs(30),
        min_refresh: Duration::from_millis(300),
        ..settings(&server)
    })
    .unwrap();
    provider.set_names(names(&["tasks.web"]));
    wait_answer(&provider, "tasks.web", "first answer", |a| {
        a.state == AnswerState::Resolved
    })
    .await;
    let first = Instant::now();
    let mut changes = provider.subscribe();
    changes.borrow_and_update();
    server.set("tasks.web", Zone::v4(&[[10, 0, 0, 1], [10, 0, 0, 2]], 600));
    provider.nudge(["tasks.web", "not-watched.test"]);
    tokio::time::timeout(Duration::from_secs(2), changes.changed())
        .await
        .expect("the nudge re-resolves long before the 30 s refresh")
        .unwrap();
    // Not before the floor since the previous query.
    assert!(
        first.elapsed() >= Duration::from_millis(250),
        "{:?}",
        first.elapsed()
    );
    assert_eq!(
        answer(&provider, "tasks.web").addrs,
        vec![ip("10.0.0.1"), ip("10.0.0.2")]
    );
}

#[tokio::test]
async fn ttl_below_refresh_is_honoured_and_the_floor_holds_for_ttl_zero() {
    let server = TestDns::start().await;
    server.set("zero.test", Zone::v4(&[[10, 0, 0, 1]], 0));
    server.set("one.test", Zone::v4(&[[10, 0, 0, 2]], 1));
    server.set("long.test", Zone::v4(&[[10, 0, 0, 3]], 600));
    let provider = DnsProvider::new(DnsSettings {
        refresh: Duration::from_secs(3),
        min_refresh: Duration::from_millis(200),
        ..settings(&server)
    })
    .unwrap();
    let start = Instant::now();
    provider.set_names(names(&["zero.test", "one.test", "long.test"]));
    // 2.3 s: TTL 0 -> every 200 ms (the floor), TTL 1 -> every second, TTL 600 -> refresh (3 s).
    tokio::time::sleep(Duration::from_millis(2300)).await;
    let a_queries = |name: &str| {
        server
            .log()
            .iter()
            .filter(|q| q.name == name && q.record_type.to_string() == "A")
            .filter(|q| q.at < start + Duration::from_millis(2300))
            .count()
    };
    let zero = a_queries("zero.test");
    assert!((8..=12).contains(&zero), "TTL 0: {zero} A queries in 2.3 s");
    let one = a_queries("one.test");
    assert!((2..=3).contains(&one), "TTL 1: {one} A queries in 2.3 s");
    assert_eq!(a_queries("long.test"), 1, "TTL 600 waits for the refresh");
}

#[tokio::test]
async fn server_down_keeps_last_answer_for_hold_valid_then_empties() {
    let mut server = TestDns::start().await;
    server.set("svc.test", Zone::v4(&[[10, 0, 0, 1], [10, 0, 0, 2]], 600));
    let provider = DnsProvider::new(settings(&server)).unwrap();
    provider.set_names(names(&["svc.test"]));
    let good = wait_answer(&provider, "svc.test", "first answer", |a| {
        a.state == AnswerState::Resolved
    })
    .await;
    // Freshest success before the outage: hold_valid counts from the last success.
    server.shutdown().await;
    let last_success = answer(&provider, "svc.test").last_success.unwrap();

    let stale = wait_answer(&provider, "svc.test", "a stale answer", |a| {
        matches!(a.state, AnswerState::Stale { .. })
    })
    .await;
    assert_eq!(stale.addrs, good.addrs, "the last good answer is kept");
    assert!(last_success.elapsed() < Duration::from_millis(800));
    let AnswerState::Stale { error, .. } = &stale.state else {
        unreachable!()
    };
    assert!(error.contains("query failed"), "{error}");

    let mut changes = provider.subscribe();
    changes.borrow_and_update();
    let failed = wait_answer(&provider, "svc.test", "the hold to expire", |a| {
        a.addrs.is_empty()
    })
    .await;
    let emptied_after = last_success.elapsed();
    assert!(
        emptied_after >= Duration::from_millis(800),
        "{emptied_after:?}"
    );
    // The expiry has a timer of its own (it does not wait for the next query): it lands just
    // after 800 ms; the slack is for a loaded machine.
    assert!(
        emptied_after < Duration::from_millis(1500),
        "{emptied_after:?}"
    );
    assert!(matches!(failed.state, AnswerState::Failed { .. }));
    assert_eq!(failed.last_success, Some(last_success));
    assert!(changes.has_changed().unwrap(), "emptying is announced");
    assert!(provider.stats().failures >= 1);
}

#[tokio::test]
async fn nxdomain_glitch_does_not_empty_and_a_never_resolved_name_is_empty() {
    let server = TestDns::start().await;
    server.set("blip.test", Zone::v4(&[[10, 0, 0, 9]], 600));
    let provider = DnsProvider::new(DnsSettings {
        hold_valid: Duration::from_secs(30),
        ..settings(&server)
    })
    .unwrap();
    provider.set_names(names(&["blip.test", "ghost.test"]));
    wait_answer(&provider, "blip.test", "first answer", |a| {
        a.state == AnswerState::Resolved
    })
    .await;

    // A name that never resolved has nothing to hold: empty at once, no hold_valid wait.
    let ghost = wait_answer(&provider, "ghost.test", "ghost to fail", |a| {
        matches!(a.state, AnswerState::Failed { .. })
    })
    .await;
    assert!(ghost.addrs.is_empty());
    assert_eq!(ghost.last_success, None);
    let AnswerState::Failed { error } = &ghost.state else {
        unreachable!()
    };
    assert!(error.contains("NXDOMAIN"), "{error}");

    server.set("blip.test", Zone::NxDomain);
    let during = wait_answer(&provider, "blip.test", "the glitch to be seen", |a| {
        matches!(a.state, AnswerState::Stale { .. })
    })
    .await;
    assert_eq!(during.addrs, vec![ip("10.0.0.9")]);

    server.set("blip.test", Zone::v4(&[[10, 0, 0, 9]], 600));
    wait_answer(&provider, "blip.test", "recovery", |a| {
        a.state == AnswerState::Resolved
    })
    .await;
    assert!(provider.stats().empty_answers >= 2);
}

#[tokio::test]
async fn servfail_is_a_failure_and_holds_the_answer() {
    let server = TestDns::start().await;
    server.set("flaky.test", Zone::v4(&[[10, 0, 0, 4]], 600));
    let provider = DnsProvider::new(DnsSettings {
        hold_valid: Duration::from_secs(30),
        ..settings(&server)
    })
    .unwrap();
    provider.set_names(names(&["flaky.test"]));
    wait_answer(&provider, "flaky.test", "first answer", |a| {
        a.state == AnswerState::Resolved
    })
    .await;
    server.set("flaky.test", Zone::ServFail);
    let stale = wait_answer(&provider, "flaky.test", "SERVFAIL", |a| {
        matches!(a.state, AnswerState::Stale { .. })
    })
    .await;
    assert_eq!(stale.addrs, vec![ip("10.0.0.4")]);
    assert!(provider.stats().failures >= 1);
}

#[tokio::test]
async fn truncated_udp_answer_is_retried_over_tcp() {
    let server = TestDns::start().await;
    let many: Vec<[u8; 4]> = (0..150u8).map(|i| [10, 1, i / 100, i % 100 + 1]).collect();
    server.set("tasks.big", Zone::v4(&many, 600));
    let provider = DnsProvider::new(settings(&server)).unwrap();
    provider.set_names(names(&["tasks.big"]));
    let answer = wait_answer(&provider, "tasks.big", "150 addresses", |a| {
        a.state == AnswerState::Resolved
    })
    .await;
    assert_eq!(answer.addrs.len(), 150);
    let expected: Vec<IpAddr> = {
        let mut v: Vec<IpAddr> = many.iter().map(|a| IpAddr::from(*a)).collect();
        v.sort();
        v
    };
    assert_eq!(answer.addrs, expected);
    let log = server.log();
    let a_over = |transport| {
        log.iter()
            .any(|q| q.record_type.to_string() == "A" && q.transport == transport)
    };
    assert!(a_over(Transport::Udp), "asked over UDP first: {log:?}");
    assert!(a_over(Transport::Tcp), "retried over TCP after TC: {log:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_rate_stays_within_the_budget_while_many_names_fail() {
    let server = TestDns::start().await;
    let mut failing = Vec::new();
    for i in 0..30 {
        let name = format!("down{i}.test");
        // A third time out (hickory retransmits those), a third SERVFAIL, a third NXDOMAIN.
        match i % 3 {
            0 => server.set(&name, Zone::Silent),
            1 => server.set(&name, Zone::ServFail),
            _ => server.set(&name, Zone::NxDomain),
        }
        failing.push(name);
    }
    let rate = 20;
    let provider = DnsProvider::new(DnsSettings {
        refresh: Duration::from_millis(100),
        min_refresh: Duration::from_millis(50),
        max_queries_per_second: rate,
        // Long enough for hickory to retransmit (every 333 ms) before timing out.
        timeout: Duration::from_millis(900),
        ..settings(&server)
    })
    .unwrap();
    let start = Instant::now();
    provider.set_names(failing.iter().cloned().collect());
    let window = Duration::from_millis(2500);
    tokio::time::sleep(window).await;
    let received = server.count_between(start, start + window);
    eprintln!("budget test: {received} queries received in {window:?}");
    // Burst (one second's worth) + rate * window. Unbounded, 30 names at a 50 ms floor
    // would send hundreds.
    let bound = rate as usize + (rate as usize * window.as_millis() as usize) / 1000;
    assert!(
        received <= bound,
        "{received} queries in {window:?}, bound {bound}"
    );
    assert!(
        received >= bound / 3,
        "the budget is used: {received} of {bound}"
    );
    let silent_retransmitted = server
        .log()
        .iter()
        .filter(|q| q.name == "down0.test")
        .count();
    assert!(silent_retransmitted >= 1);
}

#[tokio::test]
async fn removed_names_and_a_dropped_provider_stop_querying() {
    let server = TestDns::start().await;
    server.set("keep.test", Zone::v4(&[[10, 0, 0, 1]], 0));
    server.set("gone.test", Zone::v4(&[[10, 0, 0, 2]], 0));
    let provider = DnsProvider::new(settings(&server)).unwrap();
    provider.set_names(names(&["keep.test", "gone.test"]));
    wait_answer(&provider, "gone.test", "gone resolved", |a| {
        a.state == AnswerState::Resolved
    })
    .await;
    let mut changes = provider.subscribe();
    changes.borrow_and_update();

    provider.set_names(names(&["keep.test"]));
    assert!(changes.has_changed().unwrap(), "removal is announced");
    assert_eq!(
        provider.answers().keys().collect::<Vec<_>>(),
        vec!["keep.test"]
    );
    let gone_before = server.count("gone.test");
    let keep_before = server.count("keep.test");
    // Several floor intervals (100 ms): nothing may ask for the removed name any more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(server.count("gone.test"), gone_before);
    assert!(
        server.count("keep.test") > keep_before,
        "the kept name is still refreshed"
    );

    let clone = provider.clone();
    drop(provider);
    let still_alive = server.count("keep.test");
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(
        server.count("keep.test") > still_alive,
        "a clone keeps it running"
    );
    drop(clone);
    let after_drop = server.count("keep.test");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        server.count("keep.test") <= after_drop + 2,
        "a dropped provider stops its watchers (at most the A/AAAA pair in flight finishes)"
    );
}

#[tokio::test]
async fn literals_and_invalid_names_are_not_queried() {
    let server = TestDns::start().await;
    let provider = DnsProvider::new(settings(&server)).unwrap();
    let bad = format!("{}.test", "x".repeat(64));
    provider.set_names(names(&["10.0.0.8", "fd00::8", &bad]));
    assert_eq!(answer(&provider, "10.0.0.8").addrs, vec![ip("10.0.0.8")]);
    assert_eq!(answer(&provider, "fd00::8").addrs, vec![ip("fd00::8")]);
    let invalid = answer(&provider, &bad);
    assert!(invalid.addrs.is_empty());
    assert!(matches!(invalid.state, AnswerState::Failed { .. }));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(server.log().is_empty(), "{:?}", server.log());
}

#[test]
fn new_needs_a_runtime_and_valid_settings() {
    assert!(matches!(
        DnsProvider::new(DnsSettings::default()),
        Err(DnsError::NoRuntime)
    ));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        for bad in [
            DnsSettings {
                nameservers: Vec::new(),
                ..DnsSettings::default()
            },
            DnsSettings {
                min_refresh: Duration::ZERO,
                ..DnsSettings::default()
            },
            DnsSettings {
                max_queries_per_second: 0,
                ..DnsSettings::default()
            },
        ] {
            let err = DnsProvider::new(bad).unwrap_err();
            assert!(matches!(err, DnsError::InvalidSettings(_)), "{err}");
        }
        let defaults = DnsSettings::default();
        assert_eq!(defaults.nameservers, vec!["127.0.0.11:53".parse().unwrap()]);
        assert_eq!(defaults.refresh, Duration::from_secs(5));
        assert_eq!(defaults.hold_valid, Duration::from_secs(300));
        assert_eq!(defaults.min_refresh, Duration::from_secs(1));
        assert!(DnsProvider::new(defaults).is_ok());
    });
}

#[tokio::test]
async fn a_silent_first_nameserver_does_not_hide_a_working_second_one() {
    let silent = TestDns::start().await;
    silent.set("multi.test", Zone::Silent);
    let live = TestDns::start().await;
    live.set("multi.test", Zone::v4(&[[10, 0, 0, 6]], 600));
    let provider = DnsProvider::new(DnsSettings {
        nameservers: vec![silent.addr, live.addr],
        ..settings(&live)
    })
    .unwrap();
    provider.set_names(names(&["multi.test"]));
    let answer = wait_answer(
        &provider,
        "multi.test",
        "an answer via the second server",
        |a| a.state == AnswerState::Resolved,
    )
    .await;
    assert_eq!(answer.addrs, vec![ip("10.0.0.6")]);
    assert!(
        silent.count("multi.test") >= 1,
        "the first server was tried"
    );
}
