//! The PROXY protocol reader (`wharf_proxy::proxy_protocol::read_header`) on any
//! byte stream a trusted peer could send, delivered in any split.
//!
//! Invariants: the header never claims more bytes than the peer sent nor more
//! than the v2 bound (16 + 2048) or the v1 bound (107); the bytes handed on to
//! HTTP are exactly the ones after the header; a connection that does not start
//! like a PROXY header is handed on untouched; and the outcome does not depend on
//! how the bytes were split into reads.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};
use wharf_proxy::proxy_protocol::{read_header, Header, PpError};

/// Yields `data` `step` bytes per read, then end of stream.
struct Chunked<'a> {
    data: &'a [u8],
    pos: usize,
    step: usize,
}

impl AsyncRead for Chunked<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let n = self
            .step
            .min(self.data.len() - self.pos)
            .min(buf.remaining());
        let start = self.pos;
        buf.put_slice(&self.data[start..start + n]);
        self.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// Runs the reader to completion; the stream is always ready, so one poll per
/// step suffices and no runtime is needed.
fn run(data: &[u8], step: usize) -> (Result<Header, PpError>, usize) {
    let mut r = Chunked { data, pos: 0, step };
    let mut cx = Context::from_waker(Waker::noop());
    let out = {
        let mut fut = std::pin::pin!(read_header(&mut r));
        loop {
            if let Poll::Ready(out) = fut.as_mut().poll(&mut cx) {
                break out;
            }
        }
    };
    (out, r.pos)
}

fn check(data: &[u8], step: usize) -> Option<(Option<std::net::SocketAddr>, usize)> {
    let (out, given) = run(data, step);
    let h = out.ok()?;
    assert!(h.rest.len() <= given, "more bytes handed on than were read");
    let header_len = given - h.rest.len();
    assert_eq!(
        &data[header_len..given],
        &h.rest[..],
        "rest is not what followed the header"
    );
    assert!(
        header_len <= 16 + 2048,
        "header of {header_len} bytes claimed"
    );
    if data.starts_with(b"PROXY ") {
        assert!(header_len <= 107, "v1 header of {header_len} bytes claimed");
        assert!(data[..header_len].ends_with(b"\r\n"));
    } else if data.starts_with(b"\r\n\r\n\0\r\nQUIT\n") {
        assert!(header_len >= 16);
    } else {
        assert_eq!(header_len, 0, "a non-PROXY start was consumed");
        assert!(h.source.is_none());
    }
    Some((h.source, header_len))
}

fuzz_target!(|input: &[u8]| {
    let Some((&first, data)) = input.split_first() else {
        return;
    };
    let step = usize::from(first % 32) + 1;
    let whole = check(data, data.len().max(1));
    let split = check(data, step);
    let bytewise = check(data, 1);
    // The header ends at the same byte and names the same source however the
    // reads fell. (Only header_len and source: `rest` holds what was read so far.)
    assert_eq!(whole, split, "step {step}");
    assert_eq!(whole, bytewise);
});
