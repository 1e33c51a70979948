//! The HTTP/1.1 engine against the hyper path (docs/architecture.md, "Two
//! HTTP/1.1 paths"): one corpus of requests and backend responses, covering
//! every framing case (Content-Length, chunked with extensions and trailers,
//! close-delimited, HEAD, 204, 304, interim 1xx, pipelining, early answers),
//! sent through two Wharf processes that differ only in
//! `WHARF_HTTP1_ENGINE=hyper`. What reaches the backend and what reaches the
//! client must be the same: request line, fields (as a sorted list, names in
//! lower case, `date` aside) and decoded body; status line, fields and body.
//!
//! The backend is scripted: `/c/N` answers with case N's raw response bytes.

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// One request as the backend decoded it, or one response as the client did.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Message {
    start: String,
    fields: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Reads a head; `None` at a clean end of stream.
fn read_head(s: &mut impl Read, pending: &mut Vec<u8>) -> Option<(String, Vec<(String, String)>)> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end]).into_owned();
            pending.drain(..end + 4);
            let mut lines = head.split("\r\n");
            let start = lines.next().unwrap().to_string();
            let fields = lines
                .map(|l| {
                    let (n, v) = l.split_once(':').unwrap();
                    (n.trim().to_ascii_lowercase(), v.trim().to_string())
                })
                .collect();
            return Some((start, fields));
        }
        let mut buf = [0u8; 8192];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
}

fn fill(s: &mut impl Read, pending: &mut Vec<u8>, want: usize) -> bool {
    while pending.len() < want {
        let mut buf = [0u8; 8192];
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => pending.extend_from_slice(&buf[..n]),
        }
    }
    true
}

fn line(s: &mut impl Read, pending: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(i) = pending.windows(2).position(|w| w == b"\r\n") {
            let l = String::from_utf8_lossy(&pending[..i]).into_owned();
            pending.drain(..i + 2);
            return Some(l);
        }
        let n = pending.len();
        if !fill(s, pending, n + 1) {
            return None;
        }
    }
}

/// Reads a body by the message's fields; `until_close` for a response
/// without length. A chunked body's trailer fields go to `trailers`.
fn read_body(
    s: &mut impl Read,
    pending: &mut Vec<u8>,
    fields: &[(String, String)],
    until_close: bool,
    trailers: &mut Vec<(String, String)>,
) -> Vec<u8> {
    let get = |n: &str| fields.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    if get("transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        let mut body = Vec::new();
        loop {
            let size_line = line(s, pending).unwrap();
            let size =
                usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16).unwrap();
            if size == 0 {
                // Trailers, up to the empty line.
                loop {
                    let l = line(s, pending).unwrap();
                    let Some((n, v)) = l.split_once(':') else {
                        return body;
                    };
                    trailers.push((
                        format!("trailer {}", n.trim().to_ascii_lowercase()),
                        v.trim().into(),
                    ));
                }
            }
            assert!(fill(s, pending, size + 2));
            body.extend_from_slice(&pending[..size]);
            pending.drain(..size + 2);
        }
    }
    if let Some(n) = get("content-length") {
        let n: usize = n.parse().unwrap();
        assert!(fill(s, pending, n));
        return pending.drain(..n).collect();
    }
    if until_close {
        let _ = s.read_to_end(pending);
        return std::mem::take(pending);
    }
    Vec::new()
}

/// A backend on 127.0.0.1 (port chosen by the kernel) that runs `conn` on a
/// thread of its own for each connection.
fn backend_threads(conn: impl Fn(TcpStream) + Send + Sync + 'static) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let conn = Arc::new(conn);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { return };
            let conn = conn.clone();
            std::thread::spawn(move || conn(s));
        }
    });
    addr
}

fn sorted(mut fields: Vec<(String, String)>) -> Vec<(String, String)> {
    fields.retain(|(k, _)| k != "date");
    fields.sort();
    fields
}

/// A backend that records each request and answers `/c/N` with `responses[N]`
/// (closing after a response that says `Connection: close` or has no
/// length).
struct Scripted {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<Message>>>,
}

impl Scripted {
    fn start(responses: Vec<Vec<u8>>) -> Scripted {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let addr = backend_threads(move |mut s| {
            let (seen, responses) = (&seen2, &responses);
            let mut pending = Vec::new();
            while let Some((start, fields)) = read_head(&mut s, &mut pending) {
                if start.starts_with("STOP") {
                    return;
                }
                let body = read_body(&mut s, &mut pending, &fields, false, &mut Vec::new());
                let n: usize = start
                    .split_whitespace()
                    .nth(1)
                    .and_then(|p| p.strip_prefix("/c/"))
                    .and_then(|p| p.split(['/', '?']).next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                let is_head = start.starts_with("HEAD ");
                seen.lock().unwrap().push(Message {
                    start,
                    fields: sorted(fields),
                    body,
                });
                let mut resp = &responses[n][..];
                if is_head {
                    // A HEAD response is its head alone.
                    let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
                    resp = &resp[..end + 4];
                }
                if s.write_all(resp).is_err() {
                    return;
                }
                let text = String::from_utf8_lossy(resp).to_ascii_lowercase();
                let head = text.split("\r\n\r\n").next().unwrap_or("");
                let close = head.contains("connection: close")
                    || head.starts_with("http/1.0")
                    || (!head.contains("content-length")
                        && !head.contains("transfer-encoding")
                        && !head.contains(" 204 ")
                        && !head.contains(" 304 ")
                        && !text.starts_with("http/1.1 1"));
                if close {
                    return;
                }
            }
        });
        Scripted { addr, seen }
    }

    fn take(&self) -> Vec<Message> {
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

/// Sends `raw` on a fresh connection and reads `count` responses (the last
/// request says `Connection: close`, so the end is the close).
fn client(addr: SocketAddr, raw: &[u8], heads: &[bool]) -> Vec<Message> {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    let mut pending = Vec::new();
    let mut out = Vec::new();
    for &head_request in heads {
        let (start, mut fields) = read_head(&mut s, &mut pending).expect("a response");
        let code: u16 = start.split_whitespace().nth(1).unwrap().parse().unwrap();
        let mut trailers = Vec::new();
        let body = if head_request || code == 204 || code == 304 {
            Vec::new()
        } else {
            read_body(&mut s, &mut pending, &fields, true, &mut trailers)
        };
        // Trailer fields count as fields, marked.
        fields.extend(trailers);
        out.push(Message {
            start,
            fields: sorted(fields),
            body,
        });
    }
    // The last request closed the connection: nothing may follow (a
    // response too many would be a desync).
    let _ = s.read_to_end(&mut pending);
    if !pending.is_empty() {
        out.push(Message {
            start: format!("EXTRA BYTES: {}", String::from_utf8_lossy(&pending)),
            fields: Vec::new(),
            body: Vec::new(),
        });
    }
    out
}

struct Case {
    name: &'static str,
    /// Requests, `{N}` standing for the case's number; the last one closes.
    request: String,
    /// Which of the requests are HEAD (their responses have no body).
    heads: Vec<bool>,
    response: Vec<u8>,
}

fn cases() -> Vec<Case> {
    let get = |extra: &str| {
        format!("GET /c/{{N}} HTTP/1.1\r\nHost: app.test\r\n{extra}Connection: close\r\n\r\n")
    };
    let big = "x".repeat(100_000);
    let mut chunked_big = String::new();
    for piece in big.as_bytes().chunks(7_000) {
        chunked_big.push_str(&format!(
            "{:x}\r\n{}\r\n",
            piece.len(),
            std::str::from_utf8(piece).unwrap()
        ));
    }
    chunked_big.push_str("0\r\n\r\n");
    let c = |name, request: String, heads: Vec<bool>, response: &[u8]| Case {
        name,
        request,
        heads,
        response: response.to_vec(),
    };
    vec![
        c("content-length", get(""), vec![false], b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-App: 1\r\n\r\nhello"),
        c(
            "chunked-with-extensions-and-trailers",
            get(""),
            vec![false],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;name=v\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: t\r\n\r\n",
        ),
        c(
            // hyper's server passes on the declared trailer fields that may be
            // trailers, to a client whose TE lists `trailers`; the engine too.
            "declared-trailers-to-a-client-that-takes-them",
            get("TE: gzip, trailers\r\n"),
            vec![false],
            b"HTTP/1.1 200 OK\r\nTrailer: X-Checksum, Set-Cookie, x-later\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\nSet-Cookie: a=1\r\nX-Undeclared: 1\r\nX-Later: 2\r\nx-checksum: def\r\n\r\n",
        ),
        c(
            "declared-trailers-to-a-client-that-does-not-take-them",
            get(""),
            vec![false],
            b"HTTP/1.1 200 OK\r\nTrailer: X-Checksum\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nX-Checksum: abc\r\n\r\n",
        ),
        c(
            "close-delimited",
            get(""),
            vec![false],
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end",
        ),
        c(
            "head",
            "HEAD /c/{N} HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n".into(),
            vec![true],
            b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n",
        ),
        c("no-content", get(""), vec![false], b"HTTP/1.1 204 No Content\r\nX-A: b\r\n\r\n"),
        c(
            "no-content-with-length",
            get(""),
            vec![false],
            b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\n\r\n",
        ),
        c(
            "te-trailers-and-chunk-size-whitespace",
            get(""),
            vec![false],
            b"HTTP/1.1 200 OK\r\nTE: trailers\r\nTransfer-Encoding: chunked\r\n\r\n5 \r\nhello\r\n0\r\n\r\n",
        ),
        c(
            "not-modified",
            get("If-None-Match: \"e\"\r\n"),
            vec![false],
            b"HTTP/1.1 304 Not Modified\r\nETag: \"e\"\r\n\r\n",
        ),
        c(
            "interim-then-final",
            get(""),
            vec![false],
            b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        c(
            "post-content-length",
            "POST /c/{N} HTTP/1.1\r\nHost: app.test\r\nContent-Length: 11\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nhello world"
                .into(),
            vec![false],
            b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n",
        ),
        c(
            "post-chunked",
            format!("POST /c/{{N}} HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{chunked_big}"),
            vec![false],
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nyes\r\n0\r\n\r\n",
        ),
        c(
            "hop-by-hop-and-forged-forwarding",
            get("Keep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nX-Forwarded-For: 6.6.6.6\r\nX-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\nX_Forwarded_For: 6.6.6.6\r\nX-Forwarded-Proto: https\r\nProxy-Authorization: Basic eA==\r\nCookie: a=1\r\nCookie: b=2\r\n"),
            vec![false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nKeep-Alive: timeout=5\r\nProxy-Authenticate: Basic\r\nConnection: keep-alive\r\n\r\n",
        ),
        c(
            "backend-closes",
            get(""),
            vec![false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye",
        ),
        c("custom-reason", get(""), vec![false], b"HTTP/1.1 200 Fine Thanks\r\nContent-Length: 0\r\n\r\n"),
        c("empty-reason", get(""), vec![false], b"HTTP/1.1 404 \r\nContent-Length: 1\r\n\r\nx"),
        c(
            "reason-outside-utf8",
            get(""),
            vec![false],
            b"HTTP/1.1 200 O\xceK\r\nContent-Length: 1\r\n\r\nx",
        ),
        c(
            "chunked-and-length",
            get(""),
            vec![false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        ),
        c("http-1.0-backend", get(""), vec![false], b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"),
        c(
            "delete-empty-body",
            "DELETE /c/{N}/x HTTP/1.1\r\nHost: app.test\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".into(),
            vec![false],
            b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n",
        ),
        c(
            "query-and-escapes",
            "GET /c/{N}/a%20b?q=%2F&x=1;y=2 HTTP/1.1\r\nHost: APP.test:80\r\nConnection: close\r\n\r\n".into(),
            vec![false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n\r\n",
        ),
        c(
            "big-content-length",
            get(""),
            vec![false],
            &[b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n".as_slice(), big.as_bytes()].concat(),
        ),
        c(
            "big-close-delimited",
            get(""),
            vec![false],
            &[b"HTTP/1.1 200 OK\r\n\r\n".as_slice(), big.as_bytes()].concat(),
        ),
        c(
            "pipelined",
            "GET /c/{N}/1 HTTP/1.1\r\nHost: app.test\r\n\r\nHEAD /c/{N}/2 HTTP/1.1\r\nHost: app.test\r\n\r\nGET /c/{N}/3 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
                .into(),
            vec![false, true, false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\npipe",
        ),
        c(
            "pipelined-after-bodies",
            "POST /c/{N}/1 HTTP/1.1\r\nHost: app.test\r\nContent-Length: 5\r\n\r\nhelloPOST /c/{N}/2 HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nGET /c/{N}/3 HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n"
                .into(),
            vec![false, false, false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
        ),
        c(
            "connection-names-content-length",
            get(""),
            vec![false],
            b"HTTP/1.1 200 OK\r\nConnection: content-length, x-hop\r\nX-Hop: 1\r\nContent-Length: 5\r\n\r\nhello",
        ),
        c(
            "http-1.0-client",
            "GET /c/{N} HTTP/1.0\r\nHost: app.test\r\n\r\n".into(),
            vec![false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nold",
        ),
        // Sticky-cookie runs: `{TOKEN}` is the backend's token.
        c(
            "sticky-cookie-of-the-backend",
            get("Cookie: a=1; WHARFID={TOKEN}; b=2\r\nCookie: JSESSIONID={TOKEN}~app; c=3\r\n"),
            vec![false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: no-cache\r\n\r\nok",
        ),
        c(
            "sticky-cookie-private-response",
            get("Cookie: WHARFID={TOKEN}\r\n"),
            vec![false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nCache-Control: private, max-age=9\r\nSet-Cookie: x=1\r\n\r\nok",
        ),
        c(
            "sticky-cookie-set-by-the-application",
            get("Cookie: WHARFID=0123456789abcdef; JSESSIONID=s0\r\n"),
            vec![false],
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nSet-Cookie: WHARFID=app; Path=/\r\nSet-Cookie: JSESSIONID=s1; Path=/\r\nCache-Control: public, max-age=5\r\n\r\nok",
        ),
        c(
            "unrouted",
            "GET /c/{N} HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n".into(),
            vec![false],
            b"",
        ),
    ]
}

#[test]
fn the_engine_and_hyper_send_the_same_messages() {
    same_messages("");
}

/// The same through a route whose header rules make both paths work on a
/// header map (the engine's map path).
#[test]
fn the_engine_and_hyper_send_the_same_messages_through_header_rules() {
    same_messages(
        "headers = { request = { \"X-Req-Rule\" = \"1\", \"Accept\" = \"\" }, \
         response = { \"X-Resp-Rule\" = \"1\", \"X-App\" = \"\" } }",
    );
}

/// Rules on fields Wharf writes or reads itself take the engine's header-map
/// path (the ones above apply to the borrowed fields).
#[test]
fn the_engine_and_hyper_send_the_same_messages_through_rules_on_wharf_fields() {
    same_messages(
        "headers = { request = { \"X-Forwarded-Proto\" = \"https\", \"User-Agent\" = \"\" }, \
         response = { \"Date\" = \"\", \"Server\" = \"wharf\" } }",
    );
}

/// The same through routes with a sticky cookie, in each mode: the cookie
/// is read from and written to the engine's borrowed fields unless the
/// response's own fields change.
#[test]
fn the_engine_and_hyper_send_the_same_messages_through_a_sticky_cookie() {
    let secret = "[sticky]\nsecret = \"differential\"\n\n";
    same_messages_in(
        base_config(),
        secret,
        "sticky = { type = \"cookie\", ttl = \"1h\" }",
    );
    same_messages_in(base_config(), secret, "sticky = \"cookie\"");
    same_messages_in(
        base_config(),
        secret,
        "sticky = { type = \"cookie\", cookie = \"JSESSIONID\", mode = \"prefix\" }",
    );
    // From a `forwarded_trusted` peer (its X-Forwarded-For is extended).
    let trusted = base_config().replace(
        "address = \"127.0.0.1:0\"\n\n[admin]",
        "address = \"127.0.0.1:0\"\nforwarded_trusted = [\"127.0.0.0/8\"]\n\n[admin]",
    );
    assert!(trusted.contains("forwarded_trusted"));
    same_messages_in(
        trusted,
        secret,
        "sticky = { type = \"cookie\", ttl = \"1h\" }",
    );
}

fn same_messages(route_extra: &str) {
    same_messages_in(base_config(), "", route_extra)
}

/// The backend's sticky token, as a response of the engine's names it
/// (`NAME=<token>` or `NAME=<token>~value`), or `none` on a route without a
/// sticky cookie.
fn sticky_token(w: &Wharf, backend: &Scripted, corpus: &[Case]) -> String {
    let n = corpus
        .iter()
        .position(|c| c.name == "sticky-cookie-set-by-the-application")
        .unwrap();
    let request = corpus[n].request.replace("{N}", &n.to_string());
    let answers = client(w.ep("web"), request.as_bytes(), &corpus[n].heads);
    backend.take();
    answers[0]
        .fields
        .iter()
        .filter(|(k, _)| k == "set-cookie")
        .filter_map(|(_, v)| v.split_once('=').map(|(_, v)| v))
        .find(|v| v.len() >= 16 && !v.starts_with("app") && !v.starts_with("s1"))
        .map_or("none".into(), |v| v[..16].to_string())
}

fn same_messages_in(base: String, config_extra: &str, route_extra: &str) {
    let corpus = cases();
    let backend = Scripted::start(corpus.iter().map(|c| c.response.clone()).collect());
    let config = base + config_extra + &route("app.test", "/", &[backend.addr], route_extra);
    let engine = Wharf::start(&config);
    let hyper = Wharf::start_env(&config, &[("WHARF_HTTP1_ENGINE", "hyper")]);
    let token = sticky_token(&engine, &backend, &corpus);
    assert_eq!(
        token == "none",
        !route_extra.contains("sticky"),
        "{route_extra}: {token}"
    );
    let mut failures = Vec::new();
    for (n, case) in corpus.iter().enumerate() {
        let request = case
            .request
            .replace("{N}", &n.to_string())
            .replace("{TOKEN}", &token);
        let mut got = Vec::new();
        for w in [&engine, &hyper] {
            let answers = client(w.ep("web"), request.as_bytes(), &case.heads);
            got.push((backend.take(), answers));
        }
        // The one intended difference: hyper relays an HTTP/1.0 backend's
        // version in the status line; the engine sends its own, as RFC 9110
        // §6.2 asks of an intermediary.
        for m in got[1]
            .1
            .iter_mut()
            .filter(|_| case.name == "http-1.0-backend")
        {
            if let Some(rest) = m.start.strip_prefix("HTTP/1.0 ") {
                m.start = format!("HTTP/1.1 {rest}");
            }
        }
        let (e, h) = (&got[0], &got[1]);
        if e != h {
            failures.push(format!(
                "{route_extra} {}: the engine\n  backend got {:#?}\n  client got {:#?}\nhyper\n  backend got {:#?}\n  client got {:#?}",
                case.name, e.0, e.1, h.0, h.1
            ));
        }
        // Not only the same on both paths: the declared trailers that may be
        // trailers arrive (and only they).
        if case.name == "declared-trailers-to-a-client-that-takes-them" {
            let trailers: Vec<(&str, &str)> = e.1[0]
                .fields
                .iter()
                .filter(|(k, _)| k.starts_with("trailer "))
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(
                trailers,
                [
                    ("trailer x-checksum", "abc"),
                    ("trailer x-checksum", "def"),
                    ("trailer x-later", "2")
                ],
                "{route_extra}"
            );
        }
        // Each case reached the backend as often as it has requests, unless
        // it is answered by Wharf itself.
        if case.name != "unrouted" {
            assert_eq!(e.0.len(), case.heads.len(), "{}: {:#?}", case.name, e.0);
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// HTTP/2 clients (h2c with prior knowledge): their GET and HEAD go on the
/// engine's raw backend connections (`raw.rs`), where `WHARF_HTTP1_ENGINE=hyper`
/// sends them through hyper's client. Every single-request GET or HEAD case of
/// the corpus must bring the same request to the backend and the same response
/// to the client both ways, and a keep-alive backend connection is reused.
#[test]
fn raw_backends_and_hyper_client_send_the_same_messages_to_h2_clients() {
    let corpus = cases();
    let backend = Scripted::start(corpus.iter().map(|c| c.response.clone()).collect());
    let (raw, hyper, rt) = h2_pair(backend.addr, ("WHARF_HTTP1_ENGINE", "hyper"));
    let mut failures = Vec::new();
    let mut tried = 0;
    for (n, case) in corpus.iter().enumerate() {
        let method = match case.request.split_whitespace().next() {
            Some("GET") => "GET",
            Some("HEAD") => "HEAD",
            _ => continue,
        };
        if case.heads.len() != 1 || case.name == "unrouted" {
            continue;
        }
        tried += 1;
        let mut got = Vec::new();
        for w in [&raw, &hyper] {
            let answer = rt.block_on(h2_request(w.ep("web"), method, &format!("/c/{n}")));
            got.push((backend.take(), answer));
        }
        if got[0] != got[1] {
            failures.push(format!(
                "{}: raw\n  backend got {:#?}\n  client got {:#?}\nhyper\n  backend got {:#?}\n  client got {:#?}",
                case.name, got[0].0, got[0].1, got[1].0, got[1].1
            ));
        }
    }
    assert!(
        tried >= 10,
        "only {tried} cases are single GET or HEAD requests"
    );
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Wharf's HTTP/2 server against hyper's (`WHARF_HTTP2_ENGINE=hyper`): every
/// single-request case of the corpus, GET and HEAD and requests with a body
/// (sent with its `content-length`, and a second time without one, which the
/// backend then gets chunked), must bring the same request to the backend
/// and the same response to the client.
#[test]
fn wharfs_and_hypers_http2_servers_send_the_same_messages() {
    let corpus = cases();
    let mut responses: Vec<Vec<u8>> = corpus.iter().map(|c| c.response.clone()).collect();
    // The body-less variants of each request with a body answer from the end.
    let unframed_from = responses.len();
    responses.extend(corpus.iter().map(|c| c.response.clone()));
    let backend = Scripted::start(responses);
    let (own, hyper, rt) = h2_pair(backend.addr, ("WHARF_HTTP2_ENGINE", "hyper"));
    let mut failures = Vec::new();
    let mut tried = 0;
    for (n, case) in corpus.iter().enumerate() {
        if case.heads.len() != 1 || case.name == "unrouted" {
            continue;
        }
        let Some((head, body)) = case.request.split_once("\r\n\r\n") else {
            continue;
        };
        let method = head.split_whitespace().next().unwrap_or("");
        let lower = head.to_ascii_lowercase();
        let body = match method {
            "GET" | "HEAD" => None,
            _ if lower.contains("content-length:") => Some(body.as_bytes().to_vec()),
            _ => continue,
        };
        let mut variants = vec![(n, body.clone(), true)];
        // An empty body without a length is a DATA frame with END_STREAM
        // after the HEADERS: whether the request still looks unfinished when
        // it is forwarded (and goes chunked) depends on timing, on either
        // server.
        if let Some(b) = body.filter(|b| !b.is_empty()) {
            variants.push((unframed_from + n, Some(b), false));
        }
        for (slot, body, framed) in variants {
            tried += 1;
            let mut got = Vec::new();
            for w in [&own, &hyper] {
                let answer = rt.block_on(h2_send(
                    w.ep("web"),
                    method,
                    &format!("/c/{slot}"),
                    body.clone(),
                    framed,
                ));
                got.push((backend.take(), answer));
            }
            if got[0] != got[1] {
                failures.push(format!(
                    "{} (framed: {framed}): Wharf's\n  backend got {:#?}\n  client got {:#?}\nhyper's\n  backend got {:#?}\n  client got {:#?}",
                    case.name, got[0].0, got[0].1, got[1].0, got[1].1
                ));
            }
        }
    }
    assert!(tried >= 12, "only {tried} cases tried");
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

/// Two Wharfs routing app.test to `backend`, the second with `env` set, and
/// a runtime for the HTTP/2 client.
fn h2_pair(backend: SocketAddr, env: (&str, &str)) -> (Wharf, Wharf, tokio::runtime::Runtime) {
    let config = base_config() + &route("app.test", "/", &[backend], "");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    (Wharf::start(&config), Wharf::start_env(&config, &[env]), rt)
}

/// One request on its own h2c connection: `(status, fields, body)`, or the
/// error's text.
async fn h2_request(addr: SocketAddr, method: &str, path: &str) -> Result<Message, String> {
    h2_send(addr, method, path, None, true).await
}

/// [`h2_request`] with a body, sent with a `content-length` when `framed`.
async fn h2_send(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Vec<u8>>,
    framed: bool,
) -> Result<Message, String> {
    use http_body_util::BodyExt;
    let mut send = common::h2c(addr).await;
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(format!("http://app.test{path}"));
    if let (Some(b), true) = (&body, framed) {
        req = req.header("content-length", b.len());
    }
    let req = req.body(OneFrame(body.map(Into::into))).unwrap();
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    let start = resp.status().as_u16().to_string();
    let fields: Vec<(String, String)> = resp
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let mut fields: Vec<(String, String)> = fields;
    let body = match resp.into_body().collect().await {
        Ok(b) => {
            // Trailer fields count as fields, marked.
            for (k, v) in b.trailers().into_iter().flatten() {
                fields.push((
                    format!("trailer {k}"),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                ));
            }
            b.to_bytes().to_vec()
        }
        Err(e) => format!("BODY ERROR {e}").into_bytes(),
    };
    Ok(Message {
        start,
        fields: sorted(fields),
        body,
    })
}

/// A request body of one frame (none for no body) whose size is not known
/// beforehand.
struct OneFrame(Option<bytes::Bytes>);

impl hyper::body::Body for OneFrame {
    type Data = bytes::Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.take().map(|b| Ok(hyper::body::Frame::data(b))))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_none()
    }
}

// ---------------------------------------------------------------------------
// The engine's own regressions (found by review), each on both paths.

const PATHS: [&[(&str, &str)]; 2] = [&[], &[("WHARF_HTTP1_ENGINE", "hyper")]];

/// Reads whatever arrives until the peer closes or is quiet for `quiet`;
/// says whether it closed.
fn read_all(s: &mut TcpStream, quiet: Duration) -> (String, bool) {
    s.set_read_timeout(Some(quiet)).unwrap();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match s.read(&mut chunk) {
            Ok(0) => return (String::from_utf8_lossy(&buf).into_owned(), true),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (String::from_utf8_lossy(&buf).into_owned(), false)
            }
            Err(_) => return (String::from_utf8_lossy(&buf).into_owned(), true),
        }
    }
}

/// A request body the backend never got (it could not be reached) is not
/// read as the next request: the engine's 502 closes the connection.
#[test]
fn a_body_not_forwarded_is_never_parsed_as_a_request() {
    let dead = DeadAddr::new();
    for env in PATHS {
        let w = Wharf::start_env(
            &(base_config() + &route("app.test", "/", &[dead.addr], "")),
            env,
        );
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: app.test\r\n\r\n";
        let mut s = TcpStream::connect(w.ep("web")).unwrap();
        s.write_all(
            format!(
                "POST / HTTP/1.1\r\nHost: app.test\r\nContent-Length: {}\r\n\r\n{smuggled}",
                smuggled.len()
            )
            .as_bytes(),
        )
        .unwrap();
        let (got, closed) = read_all(&mut s, Duration::from_secs(3));
        assert_eq!(got.matches("HTTP/1.1 ").count(), 1, "{env:?}: {got}");
        assert!(got.starts_with("HTTP/1.1 502"), "{env:?}: {got}");
        // The engine closes; hyper reads the small body away and keeps the
        // connection (either way nothing of the body is a request).
        assert!(
            closed || !env.is_empty(),
            "the engine kept the connection open"
        );
    }
}

/// A backend that sends more than its answer (a body on a HEAD response)
/// never has the extra bytes read as another request's answer.
#[test]
fn bytes_past_a_backend_answer_never_answer_the_next_request() {
    let addr = backend_threads(|mut s| {
        let mut pending = Vec::new();
        while let Some((start, _)) = read_head(&mut s, &mut pending) {
            let answer: &[u8] = if start.starts_with("HEAD") {
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nEVIL"
            } else {
                b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nreal"
            };
            if s.write_all(answer).is_err() {
                return;
            }
        }
    });
    for env in PATHS {
        let w = Wharf::start_env(&(base_config() + &route("app.test", "/", &[addr], "")), env);
        for _ in 0..3 {
            let got = client(
                w.ep("web"),
                b"HEAD /a HTTP/1.1\r\nHost: app.test\r\n\r\nGET /b HTTP/1.1\r\nHost: app.test\r\nConnection: close\r\n\r\n",
                &[true, false],
            );
            assert_eq!(got[1].body, b"real", "{env:?}: {got:?}");
        }
        for _ in 0..3 {
            let r = get(w.ep("web"), "app.test", "/c");
            assert_eq!(r.body, b"real", "{env:?}");
        }
    }
}

/// A backend that reads a chunked upload as it comes (and sends an
/// unasked `100 Continue` first) gets each chunk before the client sends the
/// next, and its final answer reaches the client.
#[test]
fn a_chunked_upload_streams_and_survives_an_interim_response() {
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let tx = Mutex::new(tx);
    let addr = backend_threads(move |mut s| {
        let tx = tx.lock().unwrap().clone();
        let mut pending = Vec::new();
        while let Some((_, _)) = read_head(&mut s, &mut pending) {
            s.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").unwrap();
            let mut body = Vec::new();
            loop {
                let size_line = line(&mut s, &mut pending).unwrap();
                let size = usize::from_str_radix(size_line.trim(), 16).unwrap();
                if size == 0 {
                    while !line(&mut s, &mut pending).unwrap().is_empty() {}
                    break;
                }
                assert!(fill(&mut s, &mut pending, size + 2));
                let chunk: Vec<u8> = pending.drain(..size + 2).take(size).collect();
                let _ = tx.send(String::from_utf8_lossy(&chunk).into_owned());
                body.extend_from_slice(&chunk);
            }
            let answer = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
            s.write_all(answer.as_bytes()).unwrap();
            s.write_all(&body).unwrap();
        }
    });
    for env in PATHS {
        let w = Wharf::start_env(&(base_config() + &route("app.test", "/", &[addr], "")), env);
        let mut s = TcpStream::connect(w.ep("web")).unwrap();
        s.write_all(b"POST /up HTTP/1.1\r\nHost: app.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nfirst\r\n")
            .unwrap();
        // The first chunk reaches the backend while the client still holds
        // the rest back.
        let first = rx
            .recv_timeout(Duration::from_secs(5))
            .unwrap_or_else(|_| panic!("{env:?}: the first chunk was held back"));
        assert_eq!(first, "first");
        s.write_all(b"6\r\nsecond\r\n0\r\n\r\n").unwrap();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "second");
        let (got, _) = read_all(&mut s, Duration::from_secs(5));
        assert!(got.starts_with("HTTP/1.1 200"), "{env:?}: {got}");
        assert!(got.ends_with("firstsecond"), "{env:?}: {got}");
    }
}

/// `max_idle_per_backend = 0` pools nothing and fails nothing.
#[test]
fn no_idle_pool_at_all() {
    let backend = Scripted::start(vec![
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec()
    ]);
    for env in PATHS {
        let w = Wharf::start_env(
            &(base_config().replace(
                "[docker]",
                "[upstream]\nmax_idle_per_backend = 0\n\n[docker]",
            ) + &route("app.test", "/", &[backend.addr], "")),
            env,
        );
        for _ in 0..3 {
            assert_eq!(get(w.ep("web"), "app.test", "/c/0").status, 200, "{env:?}");
        }
    }
}

/// A backend that answers an upload early (413) and stops reading it: the
/// answer reaches the client at once, not after `response_timeout`.
#[test]
fn an_early_answer_to_an_upload_is_relayed_at_once() {
    let addr = backend_threads(|mut s| {
        let mut pending = Vec::new();
        if read_head(&mut s, &mut pending).is_some() {
            let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbig");
            // Reads nothing more for a while, as a server that gave up.
            std::thread::sleep(Duration::from_secs(8));
        }
    });
    for env in PATHS {
        let w = Wharf::start_env(&(base_config() + &route("app.test", "/", &[addr], "")), env);
        let mut s = TcpStream::connect(w.ep("web")).unwrap();
        let size = 64 * 1024 * 1024;
        s.write_all(
            format!("POST /up HTTP/1.1\r\nHost: app.test\r\nContent-Length: {size}\r\n\r\n")
                .as_bytes(),
        )
        .unwrap();
        let mut up = s.try_clone().unwrap();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..size / chunk.len() {
                if up.write_all(&chunk).is_err() {
                    return;
                }
            }
        });
        let t = std::time::Instant::now();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let (start, _) = read_head(&mut s, &mut Vec::new()).expect("an answer");
        assert!(start.starts_with("HTTP/1.1 413"), "{env:?}: {start:?}");
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "{env:?}: took {:?}",
            t.elapsed()
        );
        let _ = s.shutdown(std::net::Shutdown::Both);
        let _ = writer.join();
    }
}
