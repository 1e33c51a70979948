//! The `docker` CLI against the machine's Engine, and the guard that puts the Engine in swarm
//! mode for the tests of one process and puts it back as found.

use std::process::Command;
use std::sync::Mutex;

/// Runs `docker args`, returning trimmed stdout, or the error text.
pub fn try_docker(args: &[&str]) -> Result<String, String> {
    let out = Command::new("docker")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run docker: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "docker {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn docker(args: &[&str]) -> String {
    try_docker(args).unwrap_or_else(|e| panic!("{e}"))
}

/// Swarm users in this process, and whether one of them put the Engine in swarm mode.
static SWARM_USERS: Mutex<(usize, bool)> = Mutex::new((0, false));
/// `docker swarm init` creates the `docker_gwbridge` network and `leave` keeps it:
/// removed again when it did not exist before.
static GWBRIDGE_NEW: Mutex<bool> = Mutex::new(false);

/// Holds the Engine in swarm mode. Tests of one binary run in parallel: the first user puts
/// the Engine in swarm mode if it is not, the last one out takes it out again, and only if a
/// test put it in.
pub struct Swarm {
    _private: (),
}

impl Swarm {
    /// Joins the swarm users of this process; an error when the Engine cannot be a swarm
    /// manager (a worker node, a locked swarm, no Engine).
    pub fn join() -> Result<Swarm, String> {
        let mut users = SWARM_USERS.lock().unwrap_or_else(|p| p.into_inner());
        if users.0 == 0 {
            let state = try_docker(&[
                "info",
                "--format",
                "{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}}",
            ])?;
            users.1 = false;
            match state.as_str() {
                "active true" => {}
                s if s.starts_with("inactive") => {
                    *GWBRIDGE_NEW.lock().unwrap_or_else(|p| p.into_inner()) =
                        try_docker(&["network", "inspect", "docker_gwbridge"]).is_err();
                    try_docker(&[
                        "swarm",
                        "init",
                        "--advertise-addr",
                        "127.0.0.1",
                        "--listen-addr",
                        "127.0.0.1:2377",
                    ])?;
                    users.1 = true;
                }
                s => {
                    return Err(format!(
                        "this Docker Engine is in swarm state `{s}`; the tests need a manager"
                    ))
                }
            }
        }
        users.0 += 1;
        Ok(Swarm { _private: () })
    }
}

impl Drop for Swarm {
    fn drop(&mut self) {
        let mut users = SWARM_USERS.lock().unwrap_or_else(|p| p.into_inner());
        users.0 -= 1;
        if users.0 == 0 && users.1 {
            users.1 = false;
            let _ = try_docker(&["swarm", "leave", "--force"]);
            if *GWBRIDGE_NEW.lock().unwrap_or_else(|p| p.into_inner()) {
                let _ = try_docker(&["network", "rm", "docker_gwbridge"]);
            }
        }
    }
}
