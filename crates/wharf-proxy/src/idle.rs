//! Inactivity timeouts: HAProxy's `timeout client` (a client that stops reading
//! its response, or stops sending its request body) and `timeout tunnel` (an
//! upgraded connection with no byte either way).
//!
//! A timer per stream that is re-armed on every byte would cost a clock read
//! per read and write on the keep-alive path. Instead progress only sets a flag,
//! and a timer, armed the first time an operation has to wait, ticks every
//! quarter of the limit: a tick that finds no progress since the last one
//! counts, four in a row end the stream. So a stalled stream is cut after
//! between 3/4 and 5/4 of the limit, and a busy one never touches the clock.
//! This must never end a stream that waits for nothing (an idle keep-alive
//! connection between requests has its own timers in the listener).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Ticks without progress that end a stream.
const TICKS: u8 = 4;

/// The shared bookkeeping: a lazily armed ticking timer and a progress flag.
#[derive(Debug)]
pub(crate) struct Stall {
    limit: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    progressed: bool,
    idle_ticks: u8,
}

impl Stall {
    /// `limit` zero: never expires.
    pub(crate) fn new(limit: Duration) -> Self {
        Stall {
            limit,
            timer: None,
            progressed: false,
            idle_ticks: 0,
        }
    }

    #[inline]
    pub(crate) fn progress(&mut self) {
        self.progressed = true;
    }

    /// Called when an operation has to wait: registers the waker with the
    /// timer and says whether the stream has made no progress for the limit.
    pub(crate) fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        if self.limit.is_zero() {
            return false;
        }
        let tick = self.limit / u32::from(TICKS);
        let timer = self.timer.get_or_insert_with(|| {
            // Armed now: whatever happened before does not count as idle.
            Box::pin(tokio::time::sleep(tick))
        });
        while timer.as_mut().poll(cx).is_ready() {
            if std::mem::take(&mut self.progressed) {
                self.idle_ticks = 0;
            } else {
                self.idle_ticks += 1;
                if self.idle_ticks >= TICKS {
                    return true;
                }
            }
            timer.as_mut().reset(Instant::now() + tick);
        }
        false
    }
}

fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "inactivity timeout")
}

/// A byte stream whose waiting writes (and, with `reads`, waiting reads) end it
/// when nothing moved for the limit.
pub(crate) struct Inactivity<I> {
    io: I,
    reads: bool,
    stall: Stall,
}

impl<I> Inactivity<I> {
    /// Client connections: only a write that cannot proceed counts as waiting
    /// (a client that does not read), since a keep-alive or long-poll client
    /// legitimately sends nothing for long.
    pub(crate) fn writes(io: I, limit: Duration) -> Self {
        Inactivity {
            io,
            reads: false,
            stall: Stall::new(limit),
        }
    }

    /// Tunnels: a byte either way is progress; nothing either way for the
    /// limit ends the tunnel.
    pub(crate) fn both(io: I, limit: Duration) -> Self {
        Inactivity {
            io,
            reads: true,
            stall: Stall::new(limit),
        }
    }
}

impl<I> Inactivity<I> {
    pub(crate) fn into_inner(self) -> I {
        self.io
    }
}

impl<I: crate::h1::Transport> crate::h1::Transport for Inactivity<I> {
    fn poll_peer(&self, cx: &mut Context<'_>) -> Poll<()> {
        self.io.poll_peer(cx)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Inactivity<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        match Pin::new(&mut this.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                this.stall.progress();
                Poll::Ready(r)
            }
            Poll::Pending => {
                if this.reads && this.stall.poll_expired(cx) {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> Inactivity<I> {
    fn waited<T>(&mut self, p: Poll<io::Result<T>>, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        match p {
            Poll::Ready(r) => {
                self.stall.progress();
                Poll::Ready(r)
            }
            Poll::Pending => {
                if self.stall.poll_expired(cx) {
                    return Poll::Ready(Err(timed_out()));
                }
                Poll::Pending
            }
        }
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Inactivity<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let p = Pin::new(&mut this.io).poll_write(cx, buf);
        this.waited(p, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let p = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.waited(p, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let p = Pin::new(&mut this.io).poll_flush(cx);
        this.waited(p, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let p = Pin::new(&mut this.io).poll_shutdown(cx);
        this.waited(p, cx)
    }
}

/// A client's request body that fails when no data arrives for the limit
/// (the backend would otherwise wait for it until `response_timeout`, or,
/// after an early response, forever).
#[derive(Debug)]
pub struct TimedBody<B> {
    inner: B,
    stall: Stall,
}

impl<B> TimedBody<B> {
    pub(crate) fn new(inner: B, limit: Duration) -> Self {
        TimedBody {
            inner,
            stall: Stall::new(limit),
        }
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the client sent no request body data within client_timeout")]
pub struct BodyStalled;

impl<B> Body for TimedBody<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(f) => {
                this.stall.progress();
                Poll::Ready(f.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending => {
                if this.stall.poll_expired(cx) {
                    return Poll::Ready(Some(Err(Box::new(BodyStalled))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Waits until `stall` expires (for tests).
#[cfg(test)]
async fn expired(stall: &mut Stall) {
    std::future::poll_fn(|cx| {
        if stall.poll_expired(cx) {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test(start_paused = true)]
    async fn a_stalled_stream_expires_within_a_quarter_of_the_limit() {
        let mut s = Stall::new(Duration::from_secs(8));
        let t = Instant::now();
        expired(&mut s).await;
        let took = t.elapsed();
        assert!(
            took >= Duration::from_secs(6) && took <= Duration::from_secs(10),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn progress_keeps_it_alive() {
        let mut s = Stall::new(Duration::from_secs(8));
        let t = Instant::now();
        // A busy stream: progress every second for 30 s, polled as a waiting
        // operation would poll it.
        for _ in 0..30 {
            s.progress();
            let woke = std::future::poll_fn(|cx| Poll::Ready(s.poll_expired(cx))).await;
            assert!(!woke);
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        assert!(t.elapsed() >= Duration::from_secs(30));
        // Then silence: expires.
        let t = Instant::now();
        expired(&mut s).await;
        assert!(t.elapsed() <= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_write_nobody_reads_times_out_and_an_idle_read_does_not() {
        // A 64-byte pipe: the writer blocks once it is full.
        let (a, mut b) = tokio::io::duplex(64);
        let mut w = Inactivity::writes(a, Duration::from_secs(4));
        let big = vec![0u8; 4096];
        let err = w.write_all(&big).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Write-only: a read that waits is never cut.
        let (a, _b) = tokio::io::duplex(64);
        let mut r = Inactivity::writes(a, Duration::from_secs(4));
        let mut buf = [0u8; 8];
        let read = tokio::time::timeout(Duration::from_secs(60), r.read(&mut buf)).await;
        assert!(read.is_err(), "the read waited, it was not cut");
        let _ = b.read(&mut buf).await;
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_tunnel_side_times_out() {
        let (a, _b) = tokio::io::duplex(64);
        let mut t = Inactivity::both(a, Duration::from_secs(4));
        let mut buf = [0u8; 8];
        let err = t.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }
}
