//! Relaying an upgraded connection (WebSocket and other `101` tunnels) both
//! ways without a buffer per tunnel.
//!
//! `tokio::io::copy_bidirectional` gives each direction its own 8 KiB buffer
//! for the tunnel's whole life, 16 KiB per tunnel that is idle nearly all the
//! time (a WebSocket waits for its next message). Here each read lands in one
//! scratch buffer per thread and is written on at once; only the part the
//! other side cannot take yet is copied into a buffer of the tunnel's own,
//! released as soon as it is written. An idle tunnel holds no buffer
//! (docs/benchmarks.md, memory per idle connection).

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The scratch buffer's size: what one read may bring.
const SCRATCH: usize = 16 * 1024;

thread_local! {
    static SCRATCH_BUF: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH].into_boxed_slice());
}

/// One direction's state.
#[derive(Default)]
struct Half {
    /// Read but not yet written (the writer was not ready); empty, and
    /// without an allocation, whenever the writer kept up.
    pending: Vec<u8>,
    at: usize,
    /// Written since the last flush.
    unflushed: bool,
    /// The reader ended; the writer is being shut down.
    read_done: bool,
    done: bool,
}

impl Half {
    /// Moves what `from` sends to `to` until `from` ends (then shuts `to`
    /// down) or one of them has to wait.
    fn poll<A, B>(&mut self, cx: &mut Context<'_>, from: &mut A, to: &mut B) -> Poll<io::Result<()>>
    where
        A: AsyncRead + Unpin + ?Sized,
        B: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.at < self.pending.len() {
                let n = ready!(Pin::new(&mut *to).poll_write(cx, &self.pending[self.at..]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.unflushed = true;
                self.at += n;
                if self.at == self.pending.len() {
                    self.pending = Vec::new();
                    self.at = 0;
                }
                continue;
            }
            if self.read_done {
                ready!(Pin::new(&mut *to).poll_shutdown(cx))?;
                self.done = true;
                continue;
            }
            let read = SCRATCH_BUF.with(|scratch| {
                let mut scratch = scratch.borrow_mut();
                let mut buf = ReadBuf::new(&mut scratch[..]);
                match Pin::new(&mut *from).poll_read(cx, &mut buf) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Ready(Ok(())) => {
                        let data = buf.filled();
                        if data.is_empty() {
                            self.read_done = true;
                            return Poll::Ready(Ok(()));
                        }
                        // Written on at once; what the writer cannot take yet
                        // is kept (and waited for at the top of the loop).
                        match Pin::new(&mut *to).poll_write(cx, data) {
                            Poll::Ready(Ok(0)) => Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                            Poll::Ready(Ok(n)) => {
                                self.unflushed = true;
                                if n < data.len() {
                                    self.pending.extend_from_slice(&data[n..]);
                                }
                                Poll::Ready(Ok(()))
                            }
                            Poll::Pending => {
                                self.pending.extend_from_slice(data);
                                Poll::Ready(Ok(()))
                            }
                            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                        }
                    }
                }
            });
            match read {
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read for now: what was written goes
                    // out before waiting (a TLS writer may hold a record).
                    if self.unflushed {
                        ready!(Pin::new(&mut *to).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }
}

/// Relays both ways until both directions have ended (each end's shutdown
/// is passed on to the other side), or until either fails.
pub(crate) fn relay<'a, A, B>(
    a: &'a mut A,
    b: &'a mut B,
) -> impl Future<Output = io::Result<()>> + 'a
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let (mut ab, mut ba) = (Half::default(), Half::default());
    std::future::poll_fn(move |cx| {
        let to_b = ab.poll(cx, a, b)?;
        let to_a = ba.poll(cx, b, a)?;
        if to_b.is_ready() && to_a.is_ready() {
            Poll::Ready(Ok(()))
        } else {
            Poll::Pending
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Both directions, a large transfer through a small pipe (the writer
    /// waits, so bytes are kept and released), and the shutdowns passed on.
    #[tokio::test]
    async fn relays_both_ways_and_passes_shutdowns() {
        let (mut client, mut near) = tokio::io::duplex(1024);
        let (mut far, mut backend) = tokio::io::duplex(1024);
        let relay = tokio::spawn(async move { relay(&mut near, &mut far).await });
        let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let sent = big.clone();
        let writer = tokio::spawn(async move {
            client.write_all(&sent).await.unwrap();
            client.shutdown().await.unwrap();
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        backend.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, big, "client to backend, in order and whole");
        backend.write_all(b"answer").await.unwrap();
        backend.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"answer");
        relay.await.unwrap().unwrap();
    }

    /// Each half ends on its own: the backend may answer after the client
    /// has half-closed, and the relay waits for both.
    #[tokio::test]
    async fn half_close_keeps_the_other_direction() {
        let (mut client, mut near) = tokio::io::duplex(64);
        let (mut far, mut backend) = tokio::io::duplex(64);
        let relay = tokio::spawn(async move { relay(&mut near, &mut far).await });
        client.shutdown().await.unwrap();
        let mut none = Vec::new();
        backend.read_to_end(&mut none).await.unwrap();
        assert!(none.is_empty());
        backend.write_all(b"late").await.unwrap();
        let mut four = [0u8; 4];
        client.read_exact(&mut four).await.unwrap();
        assert_eq!(&four, b"late");
        assert!(!relay.is_finished());
        drop(backend);
        relay.await.unwrap().unwrap();
    }
}
