//! Docker objects for end-to-end tests, made through the `docker` CLI against the
//! machine's Engine, every one named with a unique prefix and removed on drop
//! (also when the test fails). No registry is used: images are made with
//! `docker import` from files already on this machine.
#![allow(dead_code)]
#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::TempDir;

use wharf_testkit::docker::Swarm;
pub use wharf_testkit::docker::{docker, try_docker};

#[derive(Debug)]
enum Obj {
    Container(String),
    Service(String),
    Network(String),
    Image(String),
}

/// Owns the Docker objects one test creates.
pub struct Engine {
    pub prefix: String,
    objects: Mutex<Vec<Obj>>,
    /// This test uses swarm mode: the guard that leaves it again after the last
    /// user of this process (dropped after the test's objects are removed).
    swarm: Mutex<Option<Swarm>>,
    dir: TempDir,
}

impl Engine {
    pub fn new(tag: &str) -> Engine {
        if let Err(e) = try_docker(&["version", "--format", "{{.Server.Version}}"]) {
            panic!("these tests need a running Docker Engine: {e}");
        }
        Engine {
            prefix: format!("wharf-t-{tag}-{}-{}", std::process::id(), fastrand::u32(..)),
            objects: Mutex::new(Vec::new()),
            swarm: Mutex::new(None),
            dir: TempDir::new(tag),
        }
    }

    pub fn name(&self, what: &str) -> String {
        format!("{}-{what}", self.prefix)
    }

    fn own(&self, o: Obj) {
        self.objects.lock().unwrap().push(o);
    }

    /// A user-defined bridge network (its addresses are local to this machine).
    pub fn bridge(&self, what: &str) -> String {
        let name = self.name(what);
        docker(&["network", "create", "--driver", "bridge", &name]);
        self.own(Obj::Network(name.clone()));
        name
    }

    /// An attachable overlay network (swarm).
    pub fn overlay(&self, what: &str) -> String {
        let name = self.name(what);
        docker(&[
            "network",
            "create",
            "--driver",
            "overlay",
            "--attachable",
            &name,
        ]);
        self.own(Obj::Network(name.clone()));
        name
    }

    /// Puts the engine in swarm mode unless it already is; the last test of this
    /// process that needed it takes it out again (only if a test put it in).
    pub fn ensure_swarm(&self) -> Result<(), String> {
        let mut swarm = self.swarm.lock().unwrap();
        if swarm.is_none() {
            *swarm = Some(Swarm::join()?);
        }
        Ok(())
    }

    /// An image made from a directory tree with `docker import`.
    fn import(&self, root: &Path, changes: &[&str], what: &str) -> String {
        let tag = format!("{}:latest", self.name(what));
        let mut cmd = Command::new("sh");
        let mut script = format!("tar -C '{}' -c . | docker import", root.display());
        for c in changes {
            script.push_str(&format!(" -c '{c}'"));
        }
        script.push_str(&format!(" - '{tag}'"));
        let out = cmd.args(["-c", &script]).output().unwrap();
        assert!(
            out.status.success(),
            "docker import failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        self.own(Obj::Image(tag.clone()));
        docker(&["image", "inspect", "--format", "{{.Id}}", &tag])
    }

    /// A web server image: Debian's static busybox `httpd` on port 80 serving
    /// `/` and `/cgi-bin/id` (the container's host name).
    pub fn backend_image(&self) -> String {
        let busybox = ["/bin/busybox", "/usr/bin/busybox"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("busybox is missing: apt-get install busybox-static");
        let root = self.dir.0.join("backend");
        std::fs::create_dir_all(root.join("bin")).unwrap();
        std::fs::create_dir_all(root.join("www/cgi-bin")).unwrap();
        std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", root.join("bin/sh")).unwrap();
        std::fs::write(root.join("www/index.html"), "hello from busybox\n").unwrap();
        let cgi = root.join("www/cgi-bin/id");
        std::fs::write(
            &cgi,
            "#!/bin/sh\necho 'Content-Type: text/plain'\necho\n/bin/busybox hostname\n",
        )
        .unwrap();
        set_mode(&cgi, 0o755);
        self.import(
            &root,
            &[
                "EXPOSE 80",
                r#"CMD ["/bin/busybox","httpd","-f","-p","80","-h","/www"]"#,
            ],
            "backend",
        )
    }

    /// An image holding the `wharf` binary under test and the shared libraries it
    /// links (found with ldd), so the test needs no second, static build.
    pub fn wharf_image(&self) -> String {
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_wharf"));
        let root = self.dir.0.join("wharf");
        copy_with_libs(&bin, &root, "wharf");
        std::fs::create_dir_all(root.join("etc/wharf")).unwrap();
        self.import(&root, &[r#"ENTRYPOINT ["/wharf"]"#], "wharf")
    }

    /// An image made with `docker import` from the tree at `root`, with
    /// Dockerfile-style `changes`; removed on drop. Returns its ID.
    pub fn import_tree(&self, root: &Path, changes: &[&str], what: &str) -> String {
        self.import(root, changes, what)
    }

    /// `docker run -d` with the given extra arguments; returns the container name.
    pub fn run(&self, what: &str, args: &[&str]) -> String {
        let name = self.name(what);
        let mut all = vec!["run", "-d", "--name", &name, "--dns", "127.0.0.1"];
        all.extend_from_slice(args);
        self.own(Obj::Container(name.clone()));
        docker(&all);
        name
    }

    /// `docker service create -d` with the given extra arguments (image last).
    pub fn service(&self, what: &str, args: &[&str]) -> String {
        let name = self.name(what);
        let mut all = vec![
            "service",
            "create",
            "-d",
            "--quiet",
            "--no-resolve-image",
            "--name",
            &name,
            "--dns",
            "127.0.0.1",
            "--stop-grace-period",
            "1s",
        ];
        all.extend_from_slice(args);
        self.own(Obj::Service(name.clone()));
        docker(&all);
        name
    }

    /// A host port that Docker published for `container`'s `port`.
    pub fn published(&self, container: &str, port: u16) -> SocketAddr {
        let out = docker(&["port", container, &format!("{port}/tcp")]);
        out.lines()
            .find_map(|l| l.trim().parse::<SocketAddr>().ok().filter(|a| a.is_ipv4()))
            .unwrap_or_else(|| panic!("no published address for {container}:{port}: {out}"))
    }

    /// A scratch directory that lives as long as the engine guard.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }
}

fn set_mode(p: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Drop for Engine {
    fn drop(&mut self) {
        let objects = std::mem::take(&mut *self.objects.lock().unwrap());
        let mut services = Vec::new();
        for o in objects.iter() {
            match o {
                Obj::Container(n) => {
                    let _ = try_docker(&["rm", "-f", "-v", n]);
                }
                Obj::Service(n) => {
                    let _ = try_docker(&["service", "rm", n]);
                    services.push(n.clone());
                }
                _ => {}
            }
        }
        // A removed service's task containers go away asynchronously; networks
        // and images can be removed only after them.
        let deadline = Instant::now() + Duration::from_secs(30);
        for s in &services {
            loop {
                let left = try_docker(&[
                    "ps",
                    "-aq",
                    "--filter",
                    &format!("label=com.docker.swarm.service.name={s}"),
                ])
                .unwrap_or_default();
                if left.is_empty() || Instant::now() > deadline {
                    for id in left.split_whitespace() {
                        let _ = try_docker(&["rm", "-f", "-v", id]);
                    }
                    break;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        }
        for o in objects.iter() {
            if let Obj::Network(n) = o {
                // Swarm networks linger briefly after their last task.
                let deadline = Instant::now() + Duration::from_secs(15);
                while try_docker(&["network", "rm", n]).is_err() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
        }
        for o in objects.iter() {
            if let Obj::Image(i) = o {
                let _ = try_docker(&["rmi", "-f", i]);
            }
        }
        // Last: the swarm is left (when this was its last user) only once the
        // services and networks are gone.
        drop(self.swarm.lock().unwrap().take());
    }
}

/// One HTTP/1.0 GET (close-delimited, so no chunked parsing), without panicking.
pub fn try_get(addr: SocketAddr, host: &str, path: &str) -> Result<super::RawResponse, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&buf);
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no header end")?;
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(super::RawResponse {
        status,
        headers,
        body: body.as_bytes().to_vec(),
    })
}

/// GET through `addr` with a Host header until `ok` accepts the response or
/// `within` passes; returns the accepted response and when it came.
pub fn poll_until(
    addr: SocketAddr,
    host: &str,
    path: &str,
    within: Duration,
    ok: impl Fn(&super::RawResponse) -> bool,
) -> Result<(super::RawResponse, Instant), String> {
    let deadline = Instant::now() + within;
    let mut last;
    loop {
        match try_get(addr, host, path) {
            Ok(r) if ok(&r) => return Ok((r, Instant::now())),
            Ok(r) => last = format!("{} {}", r.status, r.text()),
            Err(e) => last = e,
        }
        if Instant::now() > deadline {
            return Err(format!("{host}{path} via {addr}: last answer {last}"));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

impl Engine {
    /// Removes the image `tag` on drop, like the images this engine imports (for
    /// images a test builds itself, e.g. with deploy/build-image.sh).
    pub fn adopt_image(&self, tag: &str) {
        self.own(Obj::Image(tag.to_string()));
    }
}

/// Copies the dynamically linked binary `bin` to `root/<name>` with the shared
/// libraries it links (found with ldd) at their paths under `root`, for an image
/// that needs no static build.
pub fn copy_with_libs(bin: &Path, root: &Path, name: &str) {
    std::fs::create_dir_all(root).unwrap();
    std::fs::copy(bin, root.join(name)).unwrap();
    let ldd = Command::new("ldd").arg(bin).output().unwrap();
    for line in String::from_utf8_lossy(&ldd.stdout).lines() {
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"
        let path = line
            .split("=>")
            .last()
            .and_then(|p| p.split_whitespace().next())
            .filter(|p| p.starts_with('/'));
        if let Some(p) = path {
            let dest = root.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
            std::fs::copy(p, &dest).unwrap();
        }
    }
}

/// A TCP port that is free on every host address right now (for a host-mode
/// published port; another process may take it before Docker does).
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    l.local_addr().unwrap().port()
}

/// Names of the Docker objects of `kind` (`service`, `network`, `config`,
/// `secret`, `volume`, `container`) that carry `label` (`key=value`).
pub fn labelled(kind: &str, label: &str) -> Result<Vec<String>, String> {
    let (args, fmt): (&[&str], &str) = match kind {
        "container" => (&["ps", "-a"], "{{.Names}}"),
        "service" => (&["service", "ls"], "{{.Name}}"),
        "network" => (&["network", "ls"], "{{.Name}}"),
        "config" => (&["config", "ls"], "{{.Name}}"),
        "secret" => (&["secret", "ls"], "{{.Name}}"),
        "volume" => (&["volume", "ls"], "{{.Name}}"),
        other => panic!("labelled: unknown kind {other}"),
    };
    let filter = format!("label={label}");
    let mut all = args.to_vec();
    all.extend_from_slice(&["--filter", &filter, "--format", fmt]);
    try_docker(&all).map(|out| out.lines().map(str::to_string).collect())
}

/// `container`'s IPv4 address on the network `net`.
pub fn ip_on(net: &str, container: &str) -> String {
    docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        container,
    ])
}
