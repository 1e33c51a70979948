//! The server driven by the h2 crate's client (what a real client does) and
//! by hand-made frames (what a hostile one does).

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::body::full;

fn cfg() -> Config {
    Config {
        max_header_list: 16 * 1024,
        first_request: Duration::from_secs(10),
        idle_timeout: Duration::from_secs(60),
        retire_at: None,
    }
}

/// Echoes the request: its method and path in headers, its body (and the
/// names of its trailers) in the body.
fn echo(req: Request<InBody>) -> Handling {
    Box::pin(async move {
        let (parts, body) = req.into_parts();
        let collected = match body.collect().await {
            Ok(c) => c,
            Err(_) => return Response::builder().status(499).body(full("")).unwrap(),
        };
        let trailers = collected
            .trailers()
            .map(|t| t.keys().map(|k| k.as_str()).collect::<Vec<_>>().join(","))
            .unwrap_or_default();
        let body = collected.to_bytes();
        let big = parts.uri.path() == "/big";
        let body = if big {
            Bytes::from(vec![b'x'; 3 << 20])
        } else {
            body
        };
        Response::builder()
            .header("x-method", parts.method.as_str())
            .header("x-path", parts.uri.path())
            .header(
                "x-authority",
                parts.uri.authority().map_or("", |a| a.as_str()),
            )
            .header("x-trailers", trailers)
            .header("x-expect", parts.headers.contains_key("expect").to_string())
            .body(full(body))
            .unwrap()
    })
}

/// Serves one side of a duplex pipe with `handler`; the other side is the
/// client's.
fn serve_with<F>(
    cfg: Config,
    handler: F,
) -> (DuplexStream, tokio::task::JoinHandle<Result<(), String>>)
where
    F: FnMut(Request<InBody>) -> Handling + Send + Unpin + 'static,
{
    let (client, server) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(async move {
        let mut conn = Connection::new(server, b"", cfg, handler);
        let r = (&mut conn).await;
        conn.shutdown().await;
        r.map_err(|e| e.to_string())
    });
    (client, task)
}

async fn h2_client(io: DuplexStream) -> h2::client::SendRequest<Bytes> {
    let (client, conn) = h2::client::Builder::new()
        .initial_window_size(1 << 20)
        .handshake(io)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
}

#[tokio::test]
async fn serves_requests_with_and_without_bodies_in_parallel() {
    let (io, _task) = serve_with(cfg(), echo);
    let client = h2_client(io).await;
    let mut handles = Vec::new();
    for i in 0..20u32 {
        let mut c = client.clone().ready().await.unwrap();
        handles.push(tokio::spawn(async move {
            let with_body = i % 2 == 0;
            let req = Request::builder()
                .method(if with_body { "POST" } else { "GET" })
                .uri(format!("https://app.test/p{i}"))
                .body(())
                .unwrap();
            let (resp, mut send) = c.send_request(req, !with_body).unwrap();
            if with_body {
                send.send_data(Bytes::from(format!("body {i}")), true)
                    .unwrap();
            }
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let h = resp.headers();
            assert_eq!(h["x-path"], format!("/p{i}").as_str());
            assert_eq!(h["x-authority"], "app.test");
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(d) = body.data().await {
                let d = d.unwrap();
                body.flow_control().release_capacity(d.len()).unwrap();
                got.extend_from_slice(&d);
            }
            let want = if with_body {
                format!("body {i}")
            } else {
                String::new()
            };
            assert_eq!(got, want.as_bytes());
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
}

#[tokio::test]
async fn large_bodies_both_ways_follow_the_flow_control_windows() {
    let (io, _task) = serve_with(cfg(), echo);
    let client = h2_client(io).await;
    // 3 MiB up: past the stream's window (256 KiB) and the connection's (1 MiB).
    let mut c = client.clone().ready().await.unwrap();
    let req = Request::post("https://app.test/up").body(()).unwrap();
    let (resp, mut send) = c.send_request(req, false).unwrap();
    let chunk = Bytes::from(vec![b'u'; 16 * 1024]);
    let mut left = 3 << 20;
    while left > 0 {
        send.reserve_capacity(chunk.len());
        let cap = std::future::poll_fn(|cx| send.poll_capacity(cx))
            .await
            .unwrap()
            .unwrap();
        let n = cap.min(left).min(chunk.len());
        send.send_data(chunk.slice(..n), false).unwrap();
        left -= n;
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("x-sum", "1".parse().unwrap());
    send.send_trailers(trailers).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.headers()["x-trailers"], "x-sum");
    let got = resp.into_body().collect_len().await;
    assert_eq!(got, 3 << 20);
    // 3 MiB down: past the client's windows until it releases them.
    let mut c = client.clone().ready().await.unwrap();
    let req = Request::get("https://app.test/big").body(()).unwrap();
    let (resp, _) = c.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.into_body().collect_len().await, 3 << 20);
}

trait CollectLen {
    async fn collect_len(self) -> usize;
}

impl CollectLen for h2::RecvStream {
    async fn collect_len(mut self) -> usize {
        let mut n = 0;
        while let Some(d) = self.data().await {
            let d = d.unwrap();
            self.flow_control().release_capacity(d.len()).unwrap();
            n += d.len();
        }
        n
    }
}

#[tokio::test]
async fn expect_100_continue_gets_its_interim_response() {
    let (io, _task) = serve_with(cfg(), echo);
    let client = h2_client(io).await;
    let mut c = client.ready().await.unwrap();
    let req = Request::post("https://app.test/")
        .header("expect", "100-continue")
        .body(())
        .unwrap();
    let (resp, mut send) = c.send_request(req, false).unwrap();
    send.send_data(Bytes::from_static(b"after"), true).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.headers()["x-expect"], "true");
    assert_eq!(resp.into_body().collect_len().await, 5);
}

#[tokio::test]
async fn a_head_request_gets_no_body() {
    let (io, _task) = serve_with(cfg(), echo);
    let client = h2_client(io).await;
    let mut c = client.ready().await.unwrap();
    let req = Request::head("https://app.test/big").body(()).unwrap();
    let (resp, _) = c.send_request(req, true).unwrap();
    let resp = resp.await.unwrap();
    assert!(resp.body().is_end_stream());
    // The body's length is not made up for a HEAD (hyper's server adds one
    // only to a body it sends).
    assert!(!resp.headers().contains_key("content-length"));
}

#[tokio::test]
async fn request_bodies_read_after_their_stream_ended_give_their_credit_back() {
    let (io, _task) = serve_with(cfg(), echo);
    let client = h2_client(io).await;
    // 1,500 bodies of 1 KiB, each ending with its HEADERS' read: 1.5 MiB
    // through a 1 MiB connection window, so each must be credited back.
    let body = Bytes::from(vec![b'b'; 1024]);
    let all = async {
        for _ in 0..1500 {
            let mut c = client.clone().ready().await.unwrap();
            let req = Request::post("https://app.test/").body(()).unwrap();
            let (resp, mut send) = c.send_request(req, false).unwrap();
            send.send_data(body.clone(), true).unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.into_body().collect_len().await, 1024);
        }
    };
    tokio::time::timeout(Duration::from_secs(30), all)
        .await
        .expect("no body waited for window");
}

// Hand-made frames.

fn frame(ty: u8, flags: u8, id: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    frame_head(&mut out, payload.len(), ty, flags, id);
    out.extend_from_slice(payload);
    out
}

/// A GET's header block: literals without indexing, no Huffman.
fn get_block(path: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x82, 0x87]; // :method GET, :scheme https
    hpack::put_int(&mut b, 0, 4, 4); // :path
    hpack::put_int(&mut b, 0, 7, path.len());
    b.extend_from_slice(path.as_bytes());
    hpack::put_int(&mut b, 0, 4, 1); // :authority
    hpack::put_int(&mut b, 0, 7, 8);
    b.extend_from_slice(b"app.test");
    for (n, v) in extra {
        b.push(0);
        hpack::put_int(&mut b, 0, 7, n.len());
        b.extend_from_slice(n.as_bytes());
        hpack::put_int(&mut b, 0, 7, v.len());
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// A client that writes frames and reads whole frames back.
struct Raw {
    io: DuplexStream,
    buf: BytesMut,
    /// How long a read may wait (long under paused time, where waiting is
    /// free).
    patience: Duration,
}

impl Raw {
    async fn open(io: DuplexStream) -> Raw {
        let mut r = Raw {
            io,
            buf: BytesMut::new(),
            patience: Duration::from_secs(5),
        };
        r.send(&[PREFACE, &frame(SETTINGS, 0, 0, &[])].concat())
            .await;
        r
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next frame, or None at the end of the stream.
    async fn next(&mut self) -> Option<(u8, u8, u32, Bytes)> {
        loop {
            if self.buf.len() >= 9 {
                let len = (usize::from(self.buf[0]) << 16)
                    | (usize::from(self.buf[1]) << 8)
                    | usize::from(self.buf[2]);
                if self.buf.len() >= 9 + len {
                    let head = self.buf.split_to(9);
                    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                    return Some((head[3], head[4], id, self.buf.split_to(len).freeze()));
                }
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(self.patience, self.io.read(&mut chunk))
                .await
                .expect("the server answered in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.put_slice(&chunk[..n]);
        }
    }

    /// Frames until one of type `ty` (skipping SETTINGS, WINDOW_UPDATE and
    /// the like).
    async fn until(&mut self, ty: u8) -> Option<(u8, u32, Bytes)> {
        while let Some((t, flags, id, p)) = self.next().await {
            if t == ty {
                return Some((flags, id, p));
            }
        }
        None
    }

    /// A GET on stream `id` is answered 200: the connection still serves.
    async fn still_serves(&mut self, id: u32) {
        let get = frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &get_block("/ok", &[]),
        );
        self.send(&get).await;
        assert_eq!(self.status(id).await, 200);
    }

    async fn goaway(&mut self) -> u32 {
        let (_, _, p) = self.until(GOAWAY).await.expect("a GOAWAY");
        u32::from_be_bytes([p[4], p[5], p[6], p[7]])
    }

    /// The status of the response on `id`.
    async fn status(&mut self, id: u32) -> u16 {
        loop {
            let (_, sid, p) = self.until(HEADERS).await.expect("a response");
            if sid == id {
                let mut fields = Vec::new();
                hpack::Decoder::default()
                    .decode(&p, &mut fields, usize::MAX)
                    .unwrap();
                match &fields[0] {
                    Field::Pseudo(Pseudo::Status, v) => {
                        return std::str::from_utf8(v).unwrap().parse().unwrap()
                    }
                    f => panic!("{f:?}"),
                }
            }
        }
    }
}

#[tokio::test]
async fn protocol_violations_close_the_connection_with_their_code() {
    let long = vec![0u8; MAX_FRAME + 1];
    let cases: Vec<(&str, Vec<u8>, Reason)> = vec![
        (
            "DATA on stream 0",
            frame(DATA, 0, 0, b"x"),
            Reason::Protocol,
        ),
        (
            "a frame past the size",
            frame(DATA, 0, 1, &long),
            Reason::FrameSize,
        ),
        (
            "PUSH_PROMISE",
            frame(PUSH_PROMISE, 0, 1, &[0; 4]),
            Reason::Protocol,
        ),
        (
            "an even stream",
            frame(HEADERS, END_HEADERS, 2, &get_block("/", &[])),
            Reason::Protocol,
        ),
        (
            "a window past 2^31-1",
            frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()),
            Reason::FlowControl,
        ),
        (
            "a window update of 0",
            frame(WINDOW_UPDATE, 0, 0, &[0; 4]),
            Reason::Protocol,
        ),
        (
            "an HPACK index past the tables",
            frame(HEADERS, END_HEADERS, 1, &[0xff, 0x7f]),
            Reason::Compression,
        ),
        (
            "CONTINUATION without HEADERS",
            frame(CONTINUATION, END_HEADERS, 1, &[0x82]),
            Reason::Protocol,
        ),
        (
            "SETTINGS of odd size",
            frame(SETTINGS, 0, 0, &[0; 5]),
            Reason::FrameSize,
        ),
        (
            "a max frame size below 16384",
            frame(SETTINGS, 0, 0, &[0, 5, 0, 0, 0x10, 0]),
            Reason::Protocol,
        ),
        (
            "a header block interrupted",
            [
                frame(HEADERS, 0, 1, &get_block("/", &[])),
                frame(PING, 0, 0, &[0; 8]),
            ]
            .concat(),
            Reason::Protocol,
        ),
        (
            "an empty CONTINUATION that does not end the block",
            [
                frame(HEADERS, 0, 1, &get_block("/", &[])),
                frame(CONTINUATION, 0, 1, &[]),
            ]
            .concat(),
            Reason::EnhanceYourCalm,
        ),
    ];
    for (what, bytes, reason) in cases {
        let (io, task) = serve_with(cfg(), echo);
        let mut raw = Raw::open(io).await;
        raw.send(&bytes).await;
        assert_eq!(raw.goaway().await, reason as u32, "{what}");
        assert!(
            raw.next().await.is_none(),
            "{what}: closed after the GOAWAY"
        );
        assert!(task.await.unwrap().is_err(), "{what}");
    }
}

#[tokio::test]
async fn a_connection_without_the_preface_is_closed() {
    let (mut io, task) = serve_with(cfg(), echo);
    io.write_all(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        .await
        .unwrap();
    let mut rest = Vec::new();
    io.read_to_end(&mut rest).await.unwrap();
    assert!(task.await.unwrap().is_err());
}

#[tokio::test]
async fn a_continuation_flood_is_cut_off() {
    let (io, _task) = serve_with(cfg(), echo);
    let mut raw = Raw::open(io).await;
    raw.send(&frame(HEADERS, 0, 1, &get_block("/", &[]))).await;
    let junk = vec![0x40u8; MAX_FRAME];
    for _ in 0..10 {
        raw.send(&frame(CONTINUATION, 0, 1, &junk)).await;
    }
    assert_eq!(raw.goaway().await, Reason::EnhanceYourCalm as u32);
}

#[tokio::test]
async fn malformed_requests_reset_their_stream_only() {
    let (io, _task) = serve_with(cfg(), echo);
    let mut raw = Raw::open(io).await;
    let mut id = 1;
    for bad in [
        get_block("/", &[("X-Upper", "v")]),
        get_block("/", &[("connection", "keep-alive")]),
        get_block("/", &[("te", "gzip")]),
        get_block("/", &[("x-v", "a\rb")]),
        get_block("", &[]),
        [get_block("/", &[]), vec![0x82]].concat(), // a pseudo-header after a field? no: a second :method
        [vec![0x82], get_block("/", &[])].concat(),
    ] {
        raw.send(&frame(HEADERS, END_HEADERS | END_STREAM, id, &bad))
            .await;
        let (_, sid, p) = raw.until(RST_STREAM).await.unwrap();
        assert_eq!(sid, id);
        assert_eq!(p[..], (Reason::Protocol as u32).to_be_bytes());
        id += 2;
    }
    // The connection still serves.
    raw.still_serves(id).await;
}

#[tokio::test]
async fn a_header_list_past_the_limit_gets_431_and_the_table_stays_in_step() {
    let (io, _task) = serve_with(cfg(), echo);
    let mut raw = Raw::open(io).await;
    // An indexed literal of 17 KiB: the decoder must still add it.
    let mut b = get_block("/", &[]);
    b.push(0x40);
    hpack::put_int(&mut b, 0, 7, 5);
    b.extend_from_slice(b"x-big");
    hpack::put_int(&mut b, 0, 7, 17 * 1024);
    b.extend(std::iter::repeat_n(b'v', 17 * 1024));
    let mut frames = frame(HEADERS, END_STREAM, 1, &b[..MAX_FRAME]);
    frames.extend(frame(CONTINUATION, END_HEADERS, 1, &b[MAX_FRAME..]));
    raw.send(&frames).await;
    assert_eq!(raw.status(1).await, 431);
    raw.still_serves(3).await;
}

#[tokio::test]
async fn streams_past_the_limit_are_refused() {
    // Requests that never answer: each stream stays open.
    let (io, _task) = serve_with(cfg(), |_req| -> Handling {
        Box::pin(std::future::pending())
    });
    let mut raw = Raw::open(io).await;
    let mut all = Vec::new();
    for i in 0..=MAX_STREAMS as u32 {
        all.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            2 * i + 1,
            &get_block("/", &[]),
        ));
    }
    raw.send(&all).await;
    let (_, sid, p) = raw.until(RST_STREAM).await.unwrap();
    assert_eq!(sid, 2 * MAX_STREAMS as u32 + 1);
    assert_eq!(p[..], (Reason::RefusedStream as u32).to_be_bytes());
}

#[tokio::test]
async fn rapid_resets_close_the_connection() {
    let (io, task) = serve_with(cfg(), |_req| -> Handling {
        Box::pin(std::future::pending())
    });
    let mut raw = Raw::open(io).await;
    let mut all = Vec::new();
    for i in 0..EARLY_RESETS_MAX as u32 {
        let id = 2 * i + 1;
        all.extend(frame(
            HEADERS,
            END_HEADERS | END_STREAM,
            id,
            &get_block("/", &[]),
        ));
        all.extend(frame(RST_STREAM, 0, id, &8u32.to_be_bytes()));
    }
    raw.send(&all).await;
    assert_eq!(raw.goaway().await, Reason::EnhanceYourCalm as u32);
    assert!(task.await.unwrap().unwrap_err().contains("reset 64 of 64"));
}

#[tokio::test]
async fn resets_the_client_provokes_count_as_rapid_resets() {
    let (io, task) = serve_with(cfg(), |_req| -> Handling {
        Box::pin(std::future::pending())
    });
    let mut raw = Raw::open(io).await;
    // A POST whose request started, then a WINDOW_UPDATE of 0 on it: the
    // server resets the stream ("MadeYouReset").
    for i in 0..EARLY_RESETS_MAX as u32 {
        let id = 2 * i + 1;
        raw.send(&frame(HEADERS, END_HEADERS, id, &get_block("/", &[])))
            .await;
        raw.send(&frame(WINDOW_UPDATE, 0, id, &[0; 4])).await;
    }
    assert_eq!(raw.goaway().await, Reason::EnhanceYourCalm as u32);
    assert!(task.await.unwrap().unwrap_err().contains("reset 64 of 64"));
}

#[tokio::test]
async fn trailers_past_the_header_list_limit_reset_the_stream() {
    let (io, _task) = serve_with(cfg(), echo);
    let mut raw = Raw::open(io).await;
    raw.send(&frame(HEADERS, END_HEADERS, 1, &get_block("/", &[])))
        .await;
    let big = "v".repeat(15 * 1024);
    let mut t = Vec::new();
    for name in ["x-a", "x-b"] {
        t.push(0);
        hpack::put_int(&mut t, 0, 7, name.len());
        t.extend_from_slice(name.as_bytes());
        hpack::put_int(&mut t, 0, 7, big.len());
        t.extend_from_slice(big.as_bytes());
    }
    let mut frames = frame(HEADERS, END_STREAM, 1, &t[..MAX_FRAME]);
    frames.extend(frame(CONTINUATION, END_HEADERS, 1, &t[MAX_FRAME..]));
    raw.send(&frames).await;
    let (_, id, p) = raw.until(RST_STREAM).await.unwrap();
    assert_eq!(
        (id, &p[..]),
        (1, &(Reason::Protocol as u32).to_be_bytes()[..])
    );
}

#[tokio::test(start_paused = true)]
async fn a_header_block_left_open_closes_the_connection() {
    let (io, task) = serve_with(cfg(), echo);
    let mut raw = Raw::open(io).await;
    raw.patience = Duration::from_secs(3600);
    raw.send(&frame(HEADERS, 0, 1, &get_block("/", &[]))).await;
    assert_eq!(raw.goaway().await, Reason::EnhanceYourCalm as u32);
    assert!(task.await.unwrap().unwrap_err().contains("unfinished"));
}

#[tokio::test]
async fn pings_are_answered_and_data_on_a_reset_stream_is_credited() {
    let (io, _task) = serve_with(cfg(), echo);
    let mut raw = Raw::open(io).await;
    raw.send(&frame(PING, 0, 0, b"12345678")).await;
    let (flags, _, p) = raw.until(PING).await.unwrap();
    assert_eq!((flags, &p[..]), (ACK, &b"12345678"[..]));
    // A POST reset by the client, then its DATA in flight: ignored, and the
    // connection window is not lost.
    let post = [get_block("/", &[])].concat();
    raw.send(&frame(HEADERS, END_HEADERS, 1, &post)).await;
    raw.send(&frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()))
        .await;
    let chunk = vec![b'd'; MAX_FRAME];
    for _ in 0..(CONN_WINDOW / MAX_FRAME) {
        raw.send(&frame(DATA, 0, 1, &chunk)).await;
    }
    let (_, id, p) = raw.until(WINDOW_UPDATE).await.unwrap();
    assert_eq!(id, 0);
    assert!(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) as usize >= CONN_WINDOW / 4);
    raw.still_serves(3).await;
}

#[tokio::test]
async fn graceful_shutdown_finishes_streams_in_flight() {
    let (client_io, server_io) = tokio::io::duplex(1 << 16);
    let (go, gate) = tokio::sync::oneshot::channel::<()>();
    let gate = std::sync::Mutex::new(Some(gate));
    let handler = move |_req: Request<InBody>| -> Handling {
        let g = gate.lock().unwrap().take();
        Box::pin(async move {
            if let Some(g) = g {
                let _ = g.await;
            }
            Response::new(full("done"))
        })
    };
    let mut raw = Raw::open(client_io).await;
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/", &[]),
    ))
    .await;
    let mut conn = Connection::new(server_io, b"", cfg(), handler);
    // Let the stream start, then drain.
    let polled = tokio::time::timeout(Duration::from_millis(50), &mut conn).await;
    assert!(polled.is_err(), "the connection stays open");
    conn.graceful_shutdown();
    let serving = tokio::spawn(async move { (&mut conn).await.map_err(|e| e.to_string()) });
    assert_eq!(raw.goaway().await, Reason::NoError as u32);
    // A new stream after the GOAWAY is not served; the one in flight is.
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        3,
        &get_block("/", &[]),
    ))
    .await;
    go.send(()).unwrap();
    assert_eq!(raw.status(1).await, 200);
    serving.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_gets_goaway_and_a_silent_one_is_closed() {
    let (io, task) = serve_with(cfg(), echo);
    let mut raw = Raw::open(io).await;
    raw.patience = Duration::from_secs(3600);
    raw.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &get_block("/", &[]),
    ))
    .await;
    assert_eq!(raw.status(1).await, 200);
    let (_, _, p) = raw.until(GOAWAY).await.unwrap();
    assert_eq!(p[..4], 1u32.to_be_bytes(), "the last stream processed");
    task.await.unwrap().unwrap();
    // No request at all within the first request's limit: closed.
    let (io, task) = serve_with(cfg(), echo);
    let mut raw = Raw::open(io).await;
    raw.patience = Duration::from_secs(3600);
    while raw.next().await.is_some() {}
    assert!(task.await.unwrap().unwrap_err().contains("no request"));
}

/// A stream's state stays small: an idle connection keeps the room of its
/// stream list, and a busy one moves these about.
#[test]
fn a_streams_state_is_small() {
    assert!(std::mem::size_of::<Stream>() <= 128);
    assert!(
        std::mem::size_of::<Connection<DuplexStream, fn(Request<InBody>) -> Handling>>() <= 512
    );
}
