//! End-to-end tests of the route middlewares (`ipallowlist`, `basicauth`,
//! `headers`): the real binary against real backends on loopback, over
//! HTTP/1.1, HTTP/2 (h2c prior knowledge) and an upgrade. Every port is chosen
//! by the kernel.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::Write;
use std::net::{SocketAddr, TcpStream};

use base64::Engine as _;
use common::*;

/// `Authorization: Basic ...` for `user:password`.
fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `GET path` with extra header lines (each ending in `\r\n`).
fn get_with(addr: SocketAddr, host: &str, path: &str, extra: &str) -> RawResponse {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}Connection: close\r\n\r\n")
            .as_bytes(),
    )
}

/// One HTTP/2 (prior knowledge) GET: status and response headers.
fn h2_get(addr: SocketAddr, host: &str, path: &str, auth: Option<&str>) -> (u16, http::HeaderMap) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut send = common::h2c(addr).await;
        let mut req = hyper::Request::get(format!("http://{host}{path}"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = send
            .send_request(
                req.body(http_body_util::Empty::<bytes::Bytes>::new())
                    .unwrap(),
            )
            .await
            .unwrap();
        (resp.status().as_u16(), resp.headers().clone())
    })
}

#[test]
fn ipallowlist_by_peer_and_by_trusted_forwarded_for() {
    let a = Backend::start("a");
    // `web` trusts loopback's X-Forwarded-For; `direct` trusts nobody.
    let cfg = base_config().replace(
        "[admin]",
        "forwarded_trusted = [\"127.0.0.0/8\"]\n\n[entrypoints.direct]\naddress = \
         \"127.0.0.1:0\"\n\n[admin]",
    ) + &route(
        "peer-ok.test",
        "/",
        &[a.addr],
        "ipallowlist = { ranges = [\"10.0.0.0/8\", \"127.0.0.0/8\"] }",
    ) + &route(
        "peer-no.test",
        "/",
        &[a.addr],
        "ipallowlist = { ranges = [\"10.0.0.0/8\", \"::ffff:192.168.0.0/112\"] }",
    ) + &route(
        "xff.test",
        "/",
        &[a.addr],
        "ipallowlist = { ranges = [\"10.0.0.0/8\"], depth = 1 }",
    ) + &route(
        "xff2.test",
        "/",
        &[a.addr],
        "ipallowlist = { ranges = [\"10.0.0.0/8\"], depth = 2 }",
    );
    let w = Wharf::start(&cfg);
    let (web, direct) = (w.ep("web"), w.ep("direct"));

    assert_eq!(get(web, "peer-ok.test", "/").status, 200);
    let r = get(direct, "peer-no.test", "/");
    assert_eq!(r.status, 403);
    assert_eq!(r.text(), "403 Forbidden\n");
    assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
    let before = a.seen().len();
    // Depth 0 ignores X-Forwarded-For, even from a trusted peer.
    let r = get_with(web, "peer-no.test", "/", "X-Forwarded-For: 10.1.2.3\r\n");
    assert_eq!(r.status, 403);
    assert_eq!(
        a.seen().len(),
        before,
        "a refused request never reaches the backend"
    );

    // Depth 1: the last X-Forwarded-For entry, from a trusted peer.
    let xff =
        |ep, host, v: &str| get_with(ep, host, "/", &format!("X-Forwarded-For: {v}\r\n")).status;
    assert_eq!(xff(web, "xff.test", "8.8.8.8, 10.9.9.9"), 200);
    assert_eq!(xff(web, "xff.test", "10.9.9.9, 8.8.8.8"), 403);
    assert_eq!(get(web, "xff.test", "/").status, 403, "no entry: refused");
    // Depth 2: the one before it.
    assert_eq!(xff(web, "xff2.test", "10.9.9.9, 8.8.8.8"), 200);
    assert_eq!(xff(web, "xff2.test", "8.8.8.8"), 403, "too few entries");
    // From an untrusted peer the header is the client's own word: the peer
    // address (127.0.0.1, not in 10/8) decides.
    assert_eq!(xff(direct, "xff.test", "10.9.9.9"), 403);
    assert_eq!(xff(direct, "xff2.test", "10.9.9.9, 10.9.9.9"), 403);

    // HTTP/2 is gated the same way.
    assert_eq!(h2_get(web, "peer-ok.test", "/h2", None).0, 200);
    assert_eq!(h2_get(direct, "peer-no.test", "/h2", None).0, 403);

    // /api/routes shows the ranges and depth.
    let routes = w.api_routes();
    let xff_route = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hosts"][0] == "xff.test")
        .unwrap();
    assert_eq!(xff_route["ipallowlist"]["ranges"][0], "10.0.0.0/8");
    assert_eq!(xff_route["ipallowlist"]["depth"], 1);
    let mapped = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hosts"][0] == "peer-no.test")
        .unwrap();
    assert_eq!(
        mapped["ipallowlist"]["ranges"][1], "192.168.0.0/16",
        "canonical"
    );
}

#[test]
fn basicauth_bcrypt_sha1_apr1_remove_header_h1_h2_and_websocket() {
    let a = Backend::start("a");
    // Real hashes: bcrypt made here ($2y$ is the same algorithm as $2b$, as
    // htpasswd -B writes it), SHA1 and apr1 as `htpasswd -nbs` / `openssl passwd
    // -apr1 -salt xxxxxxxx` print them for "password".
    let bcrypt_hash = bcrypt::hash("b-secret", 4)
        .unwrap()
        .replacen("$2b$", "$2y$", 1);
    let users = format!(
        "[\"bob:{bcrypt_hash}\", \"sam:{{SHA}}W6ph5Mm5Pz8GgiULbPgzG37mj9g=\", \
         \"ann:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0\"]"
    );
    let cfg = base_config()
        + &route(
            "auth.test",
            "/",
            &[a.addr],
            &format!("basicauth = {{ users = {users}, realm = \"staff\" }}"),
        )
        + &route(
            "strip.test",
            "/",
            &[a.addr],
            &format!("basicauth = {{ users = {users}, remove_header = true }}"),
        );
    let w = Wharf::start(&cfg);
    let web = w.ep("web");

    let with = |host, auth: &str| get_with(web, host, "/", &format!("Authorization: {auth}\r\n"));
    // Missing or wrong: 401 with the challenge, and nothing reaches the backend.
    let r = get(web, "auth.test", "/");
    assert_eq!(r.status, 401);
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"staff\""));
    assert_eq!(r.text(), "401 Unauthorized\n");
    let r = get(web, "strip.test", "/");
    assert_eq!(r.header("www-authenticate"), Some("Basic realm=\"wharf\""));
    for bad in [
        basic("bob", "wrong"),
        basic("sam", "Password"),
        basic("ann", "passwor"),
        basic("eve", "password"),
        "Basic !!!".to_string(),
        "Bearer abc".to_string(),
    ] {
        assert_eq!(with("auth.test", &bad).status, 401, "{bad}");
    }
    assert!(a.seen().is_empty(), "{:?}", a.seen());
    // A right credential beside a second Authorization field: 401 (a backend
    // reading the other field would see an identity nobody verified).
    let two = get_with(
        web,
        "auth.test",
        "/",
        &format!(
            "Authorization: {}\r\nAuthorization: {}\r\n",
            basic("bob", "b-secret"),
            basic("admin", "x")
        ),
    );
    assert_eq!(two.status, 401);
    assert!(a.seen().is_empty(), "{:?}", a.seen());
    // Right: 200 for each hash kind, twice (the second from the cache), and the
    // backend sees the Authorization field unless remove_header.
    for (user, pass) in [
        ("bob", "b-secret"),
        ("sam", "password"),
        ("ann", "password"),
    ] {
        for _ in 0..2 {
            let r = with("auth.test", &basic(user, pass));
            assert_eq!(r.status, 200, "{user}");
            assert_eq!(
                a.last().header("authorization"),
                Some(basic(user, pass).as_str())
            );
        }
        let r = with("strip.test", &basic(user, pass));
        assert_eq!(r.status, 200, "{user}");
        assert_eq!(a.last().header("authorization"), None, "remove_header");
    }

    // HTTP/2.
    assert_eq!(h2_get(web, "auth.test", "/h2", None).0, 401);
    let (status, headers) = h2_get(web, "auth.test", "/h2", Some(&basic("bob", "nope")));
    assert_eq!(status, 401);
    assert_eq!(headers["www-authenticate"], "Basic realm=\"staff\"");
    assert_eq!(
        h2_get(web, "auth.test", "/h2", Some(&basic("bob", "b-secret"))).0,
        200
    );

    // An upgrade (WebSocket-style) is gated before it reaches the backend.
    let seen = a.seen().len();
    let upgrade = |auth: &str| {
        let mut s = TcpStream::connect(web).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(
            format!(
                "GET /upgrade HTTP/1.1\r\nHost: auth.test\r\n{auth}Connection: Upgrade\r\n\
                 Upgrade: websocket\r\n\r\n"
            )
            .as_bytes(),
        )
        .unwrap();
        read_response(&mut s).status
    };
    assert_eq!(upgrade(""), 401);
    assert_eq!(
        upgrade(&format!("Authorization: {}\r\n", basic("ann", "bad"))),
        401
    );
    assert_eq!(
        a.seen().len(),
        seen,
        "the refused upgrades never reached the backend"
    );
    assert_eq!(
        upgrade(&format!("Authorization: {}\r\n", basic("ann", "password"))),
        101
    );

    // /api/routes names the users, never a hash.
    let api = w.api_routes();
    assert_eq!(
        api[0]["basicauth"]["users"],
        serde_json::json!(["bob", "sam", "ann"])
    );
    assert_eq!(api[0]["basicauth"]["realm"], "staff");
    assert_eq!(api[1]["basicauth"]["remove_header"], true);
    let text = api.to_string();
    assert!(!text.contains("$apr1$") && !text.contains("{SHA}") && !text.contains("$2y$"));
}

#[test]
fn header_rules_set_and_remove_on_requests_and_responses() {
    let a = Backend::start("a");
    let cfg = base_config()
        + &route(
            "hdr.test",
            "/",
            &[a.addr],
            "headers = { request = { \"X-Env\" = \"prod\", \"X-Drop\" = \"\", \
             \"Authorization\" = \"Bearer internal\" }, response = { \"X-Frame-Options\" = \
             \"DENY\", \"X-Backend\" = \"\" } }",
        )
        + &route("plain.test", "/", &[a.addr], "");
    let w = Wharf::start(&cfg);
    let web = w.ep("web");

    let r = get_with(web, "hdr.test", "/", "X-Drop: 1\r\nX-Env: dev\r\n");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-frame-options"), Some("DENY"));
    assert_eq!(r.header("x-backend"), None, "removed from the response");
    let s = a.last();
    assert_eq!(
        s.header("x-env"),
        Some("prod"),
        "set, replacing the client's"
    );
    assert_eq!(s.header("x-drop"), None, "removed from the request");
    assert_eq!(s.header("authorization"), Some("Bearer internal"));
    // HTTP/2: the same rules.
    let (status, headers) = h2_get(web, "hdr.test", "/h2", None);
    assert_eq!(status, 200);
    assert_eq!(headers["x-frame-options"], "DENY");
    assert!(!headers.contains_key("x-backend"));
    assert_eq!(a.last().header("x-env"), Some("prod"));
    // A route without rules is untouched.
    let r = get_with(web, "plain.test", "/", "X-Drop: 1\r\n");
    assert_eq!(r.header("x-backend"), Some("a"));
    assert_eq!(r.header("x-frame-options"), None);
    assert_eq!(a.last().header("x-drop"), Some("1"));
    // The API shows the rules, a credential value redacted.
    let api = w.api_routes();
    let rules = &api[0]["headers"];
    // (The file's keys come in name order.)
    assert_eq!(
        rules["request"][0],
        serde_json::json!(["authorization", "<redacted>"])
    );
    assert_eq!(rules["request"][1], serde_json::json!(["x-drop", null]));
    assert_eq!(rules["request"][2], serde_json::json!(["x-env", "prod"]));
    assert_eq!(rules["response"][0], serde_json::json!(["x-backend", null]));
    assert!(!api.to_string().contains("Bearer internal"));
}

#[test]
fn a_bad_middleware_key_in_the_file_is_refused_by_check_and_at_start() {
    let a = Backend::start("a");
    for (extra, needle) in [
        (
            "basicauth = { users = [\"admin:plaintext\"] }",
            "plain text",
        ),
        (
            "ipallowlist = { ranges = [\"10.0.0.0/99\"] }",
            "not an address range",
        ),
        (
            "headers = { request = { \"Content-Length\" = \"1\" } }",
            "framing or hop-by-hop",
        ),
    ] {
        let cfg = base_config() + &route("x.test", "/", &[a.addr], extra);
        let dir = TempDir::new("mw-check");
        let path = dir.0.join("wharf.toml");
        std::fs::write(&path, &cfg).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_wharf"))
            .arg("check")
            .arg("--config")
            .arg(&path)
            .env_remove("WHARF_CONFIG")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{extra}: {text}");
        assert!(text.contains(needle), "{extra}: {text}");
        assert!(
            !text.contains("plaintext"),
            "the secret is not echoed: {text}"
        );
        // `wharf run` refuses it too (exit 2, before binding anything).
        assert!(Wharf::try_start(&cfg).is_err(), "{extra}");
    }
}
