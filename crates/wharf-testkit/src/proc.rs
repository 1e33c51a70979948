//! A child process that is killed on drop (also when the test panics) and whose output lines
//! are kept, so a readiness wait and a failure report can both read them.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a program gets to print its readiness line.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A child process killed on drop, whose stdout and stderr lines are kept.
pub struct Proc {
    child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
}

impl Proc {
    /// Starts `cmd` and waits until a line containing `ready` appears on its stdout or
    /// stderr; panics with everything it printed when none does in time. Set
    /// `ACME_TEST_VERBOSE` to see the output as it comes.
    pub fn spawn(cmd: &mut Command, ready: &str, what: &str) -> Proc {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel::<()>();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        // Both pipes are drained until the child exits, so it never blocks on a full one.
        for r in [out, err] {
            let (lines, tx) = (lines.clone(), tx.clone());
            std::thread::spawn(move || {
                for l in BufReader::new(r).lines().map_while(Result::ok) {
                    if std::env::var_os("ACME_TEST_VERBOSE").is_some() {
                        eprintln!("{l}");
                    }
                    lines.lock().unwrap().push(l);
                    let _ = tx.send(());
                }
            });
        }
        let p = Proc { child, lines };
        let deadline = Instant::now() + READY_WITHIN;
        while !p.lines.lock().unwrap().iter().any(|l| l.contains(ready)) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(
                !left.is_zero(),
                "{what} did not become ready:\n{}",
                p.lines.lock().unwrap().join("\n")
            );
            let _ = rx.recv_timeout(left.min(Duration::from_millis(100)));
        }
        p
    }

    /// Whether the process has exited.
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Output lines so far that contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .count()
    }

    /// Everything printed so far, one line each.
    pub fn output(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
