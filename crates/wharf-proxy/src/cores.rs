//! The per-core data plane: one current-thread runtime per core, each
//! accepting from every entrypoint's listening socket and serving the
//! connections it accepted on its own thread, with its own share of the
//! engine's pool of plain backend connections, so a request the engine
//! serves to a plain backend never leaves its core (docs/architecture.md,
//! Runtime). The control plane (providers, health checks, ACME, admin) runs on
//! a runtime of its own.

use std::cell::Cell;
use std::io;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use tokio::runtime::Handle;

thread_local! {
    /// This thread's core, from 0; `usize::MAX` on a thread that is not a
    /// core's.
    static CORE: Cell<usize> = const { Cell::new(usize::MAX) };
}

/// The process's cores, set once by [`Cores::start`]: each one's runtime, and
/// the client connections each serves now.
struct Set {
    handles: Box<[Handle]>,
    loads: Box<[AtomicUsize]>,
}

static SET: OnceLock<Set> = OnceLock::new();

/// The core this thread serves (0 outside the cores).
pub(crate) fn current() -> usize {
    match CORE.with(Cell::get) {
        usize::MAX => 0,
        core => core,
    }
}

/// The number of cores serving connections in this process: the shards the
/// backend pool keeps (one when no [`Cores`] started).
pub(crate) fn count() -> usize {
    SET.get().map_or(1, |s| s.handles.len())
}

/// A connection accepted on this core goes to another one when that one
/// serves fewer by more than this (plus an eighth of this core's): the cores
/// all accept from the same socket, and whichever wakes first takes a burst of
/// new connections, which keep-alive would keep on it for their lives.
const MARGIN: usize = 1;

/// Where a connection this core just accepted is served, counted there until
/// [`left`]: `(core, None)` here, `(core, Some(runtime))` on another core,
/// the least loaded (as HAProxy's listeners hand a connection to the thread
/// with the fewest). `None` off the cores (nothing is counted).
pub(crate) fn steer() -> Option<(usize, Option<&'static Handle>)> {
    let set = SET.get()?;
    let here = CORE.with(Cell::get);
    let mine = set.loads.get(here)?.load(Ordering::Relaxed);
    let (least, fewest) = set
        .loads
        .iter()
        .map(|l| l.load(Ordering::Relaxed))
        .enumerate()
        .min_by_key(|&(_, n)| n)?;
    let core = if fewest + MARGIN + mine / 8 < mine {
        least
    } else {
        here
    };
    set.loads[core].fetch_add(1, Ordering::Relaxed);
    Some((core, (core != here).then(|| &set.handles[core])))
}

/// A connection counted by [`steer`] on `core` closed.
pub(crate) fn left(core: usize) {
    if let Some(l) = SET.get().and_then(|s| s.loads.get(core)) {
        l.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The cores' runtimes, each on its own thread until [`Cores::stop`].
pub struct Cores {
    /// Cancels the cores' token when dropped: [`Cores::stop`], or a start
    /// that failed half-way.
    stop: tokio_util::sync::DropGuard,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Cores {
    /// Starts `n` cores (at least one). Once per process, before the
    /// forwarder is made: the pool takes its shard count from it, and the
    /// listeners steer connections between the cores it started.
    pub fn start(n: usize) -> io::Result<Cores> {
        let n = n.max(1);
        if SET.get().is_some() {
            return Err(io::Error::other("the cores are started once per process"));
        }
        let token = tokio_util::sync::CancellationToken::new();
        let mut cores = Cores {
            stop: token.clone().drop_guard(),
            threads: Vec::with_capacity(n),
        };
        let mut handles = Vec::with_capacity(n);
        for k in 0..n {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            handles.push(rt.handle().clone());
            let stop = token.clone();
            let thread = std::thread::Builder::new()
                .name(format!("wharf-core-{k}"))
                .spawn(move || {
                    CORE.with(|c| c.set(k));
                    // Runs the core's tasks until `stop`; then what is left
                    // is dropped (connections past the shutdown timeout
                    // close), waiting a moment for a blocking task (a bcrypt
                    // check) to end.
                    rt.block_on(stop.cancelled());
                    rt.shutdown_timeout(std::time::Duration::from_secs(1));
                })?;
            cores.threads.push(thread);
        }
        let set = Set {
            handles: handles.into(),
            loads: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        };
        if SET.set(set).is_err() {
            cores.stop();
            return Err(io::Error::other("the cores are started once per process"));
        }
        Ok(cores)
    }

    /// The runtimes, one per core, to spawn each core's accept loops on.
    pub fn handles(&self) -> &[Handle] {
        // Set by `start`, which made `self`.
        SET.get().map_or(&[], |s| &s.handles)
    }

    /// Stops every core and waits for its thread.
    pub fn stop(self) {
        drop(self.stop);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On a core's thread: its index, its thread, and where `n` connections
    /// it accepts in a row go.
    fn on(h: &Handle, n: usize) -> (usize, std::thread::ThreadId, Vec<usize>) {
        let (tx, rx) = std::sync::mpsc::channel();
        h.spawn(async move {
            let steered = (0..n).map(|_| steer().unwrap().0).collect();
            tx.send((current(), std::thread::current().id(), steered))
                .unwrap();
        });
        rx.recv().unwrap()
    }

    fn loads() -> Vec<usize> {
        let set = SET.get().unwrap();
        set.loads
            .iter()
            .map(|l| l.load(Ordering::Relaxed))
            .collect()
    }

    // One test: the cores are once per process. They stay set (stopped)
    // for the rest of this test binary: other tests run off the cores, where
    // `steer` says `None` and the pool uses its first shard.
    #[test]
    fn cores_run_apart_and_share_the_connections_one_accepts() {
        let cores = Cores::start(2).unwrap();
        assert!(Cores::start(2).is_err());
        assert_eq!(count(), 2);
        assert!(steer().is_none(), "this thread is no core's");
        let (zero, t0, first) = on(&cores.handles()[0], 2);
        let (one, t1, _) = on(&cores.handles()[1], 0);
        assert_eq!((zero, one), (0, 1));
        assert_ne!(t0, t1);
        assert_ne!(t0, std::thread::current().id());
        // Within the margin a core keeps what it accepts.
        assert_eq!(first, [0, 0]);
        // A burst on core 0 is shared with core 1.
        let (_, _, burst) = on(&cores.handles()[0], 98);
        let l = loads();
        assert_eq!(l.iter().sum::<usize>(), 100);
        assert!(l[0].abs_diff(l[1]) <= 2 + l[0] / 8, "{l:?} {burst:?}");
        // Connections that close are counted off their core; core 1 now
        // serves fewer by far, so core 0 sends it the next one.
        for _ in 0..l[1] {
            left(1);
        }
        let (_, _, next) = on(&cores.handles()[0], 1);
        assert_eq!(next, [1]);
        assert_eq!(loads(), [l[0], 1]);
        cores.stop();
    }
}
