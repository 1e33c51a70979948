//! A request body arriving in DATA frames, and how the connection learns what
//! its stream futures and bodies need: which stream woke, and how much of a
//! body was read (the flow-control credit to give back).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

/// What the connection's task is woken for, shared with each stream's waker
/// and request body.
#[derive(Default, Debug)]
pub(super) struct Ready {
    inner: Mutex<Woken>,
    /// Request body bytes read (or discarded by a reader that went away),
    /// not yet handed back as connection-level WINDOW_UPDATE credit. Kept
    /// apart from the streams: a stream may be gone by the time its bytes
    /// are read, and their credit must still come back.
    credit: AtomicUsize,
    /// Something was put in the lists since the last `take`: the
    /// connection's task looks at them without the lock otherwise.
    woke: AtomicBool,
}

#[derive(Default, Debug)]
pub(super) struct Woken {
    /// Streams whose future or response body woke.
    pub(super) streams: Vec<u32>,
    /// Streams whose request body was read from.
    pub(super) released: Vec<u32>,
    conn: Option<Waker>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves plain data behind.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ready {
    /// The connection's task will be woken through `w`.
    pub(super) fn register(&self, w: &Waker) {
        let mut g = lock(&self.inner);
        match &g.conn {
            Some(old) if old.will_wake(w) => {}
            _ => g.conn = Some(w.clone()),
        }
    }

    fn wake(&self, id: u32, released: bool) {
        let waker = {
            let mut g = lock(&self.inner);
            let list = if released {
                &mut g.released
            } else {
                &mut g.streams
            };
            if !list.contains(&id) {
                list.push(id);
            }
            self.woke.store(true, Ordering::Release);
            g.conn.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Connection-level credit owed since the last call.
    pub(super) fn take_credit(&self) -> usize {
        if self.credit.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.credit.swap(0, Ordering::Relaxed)
    }

    fn owe(&self, n: usize) {
        if n > 0 {
            self.credit.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Moves what woke into `into`.
    pub(super) fn take(&self, into: &mut Woken) {
        // Cleared before the lists are read: a wake-up after this sets it
        // again, and one before it is in the lists.
        if !self.woke.load(Ordering::Acquire) {
            return;
        }
        self.woke.store(false, Ordering::Relaxed);
        let mut g = lock(&self.inner);
        into.streams.append(&mut g.streams);
        into.released.append(&mut g.released);
    }
}

/// One stream's waker: it names the stream to the connection's task.
pub(super) struct StreamWaker {
    pub(super) id: u32,
    pub(super) ready: Arc<Ready>,
}

impl Wake for StreamWaker {
    fn wake(self: Arc<Self>) {
        self.ready.wake(self.id, false);
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.ready.wake(self.id, false);
    }
}

/// A request body's frames, filled by the connection and read by whoever
/// forwards the request (possibly on another thread, hyper's client).
#[derive(Debug)]
pub(super) struct Shared {
    id: u32,
    ready: Arc<Ready>,
    state: Mutex<Recv>,
}

#[derive(Default, Debug)]
struct Recv {
    data: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    end: bool,
    /// The stream was reset, or ended on an error: the body fails.
    reset: bool,
    /// Read and not yet handed back to the connection as stream credit.
    released: usize,
    /// The reader dropped the body: what arrives is credited at once.
    dropped: bool,
    waker: Option<Waker>,
}

/// Credit is handed to the connection once this much was read, or when the
/// queue empties.
const RELEASE_AT: usize = 16 * 1024;

impl Shared {
    pub(super) fn new(id: u32, ready: Arc<Ready>) -> Arc<Shared> {
        Arc::new(Shared {
            id,
            ready,
            state: Mutex::new(Recv::default()),
        })
    }

    /// Queues a DATA frame's bytes; false when the reader is gone (the
    /// connection credits them itself).
    pub(super) fn push(&self, data: Bytes, end: bool) -> bool {
        let mut g = lock(&self.state);
        if g.dropped {
            return false;
        }
        if !data.is_empty() {
            g.data.push_back(data);
        }
        g.end |= end;
        let w = g.waker.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        true
    }

    pub(super) fn trailers(&self, t: HeaderMap) {
        let mut g = lock(&self.state);
        g.trailers = Some(t);
        g.end = true;
        let w = g.waker.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
    }

    /// Bytes read since the last call (the stream's credit).
    pub(super) fn take_released(&self) -> usize {
        std::mem::take(&mut lock(&self.state).released)
    }

    /// The stream is gone: what was queued and never read is discarded and
    /// returned (the connection's credit for it), a reader still holding the
    /// body gets an error unless the body had ended, and what arrives later
    /// is not queued.
    pub(super) fn close(&self) -> usize {
        let mut g = lock(&self.state);
        let queued: usize = g.data.iter().map(Bytes::len).sum();
        g.data.clear();
        g.dropped = true;
        if !g.end {
            g.reset = true;
        }
        let w = g.waker.take();
        drop(g);
        if let Some(w) = w {
            w.wake();
        }
        queued
    }
}

/// The client reset the stream, or it ended on a protocol error, before its
/// body was complete.
#[derive(Debug, thiserror::Error)]
#[error("the HTTP/2 stream was reset before its request body ended")]
pub struct StreamReset;

/// A request's body on Wharf's HTTP/2 server.
#[derive(Debug)]
pub struct RecvBody {
    shared: Option<Arc<Shared>>,
}

impl RecvBody {
    pub(super) fn empty() -> RecvBody {
        RecvBody { shared: None }
    }

    pub(super) fn new(shared: Arc<Shared>) -> RecvBody {
        RecvBody {
            shared: Some(shared),
        }
    }
}

impl Drop for RecvBody {
    fn drop(&mut self) {
        let Some(sh) = self.shared.take() else {
            return;
        };
        let queued = {
            let mut g = lock(&sh.state);
            g.dropped = true;
            let queued: usize = g.data.iter().map(Bytes::len).sum();
            g.data.clear();
            g.released += queued;
            queued
        };
        if queued > 0 {
            sh.ready.owe(queued);
            sh.ready.wake(sh.id, true);
        }
    }
}

impl Body for RecvBody {
    type Data = Bytes;
    type Error = StreamReset;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, StreamReset>>> {
        let Some(sh) = &self.shared else {
            return Poll::Ready(None);
        };
        let mut g = lock(&sh.state);
        if let Some(d) = g.data.pop_front() {
            g.released += d.len();
            let notify = g.released >= RELEASE_AT || g.data.is_empty();
            drop(g);
            sh.ready.owe(d.len());
            if notify {
                sh.ready.wake(sh.id, true);
            }
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        if let Some(t) = g.trailers.take() {
            return Poll::Ready(Some(Ok(Frame::trailers(t))));
        }
        if g.reset {
            return Poll::Ready(Some(Err(StreamReset)));
        }
        if g.end {
            return Poll::Ready(None);
        }
        match &g.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => g.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        match &self.shared {
            None => true,
            Some(sh) => {
                let g = lock(&sh.state);
                g.end && !g.reset && g.data.is_empty() && g.trailers.is_none()
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.shared {
            None => SizeHint::with_exact(0),
            Some(_) => SizeHint::default(),
        }
    }
}
