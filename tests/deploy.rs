//! deploy/ for real, on the machine's Docker Engine: the image that
//! deploy/build-image.sh builds, then deploy/wharf-stack.yml and
//! deploy/example-tenant.yml deployed with `docker stack deploy` as an operator and
//! a tenant would. Override files change only what a shared test machine needs:
//! unique names, free host ports instead of 80/443, the test's images, and
//! `dns: 127.0.0.1` so that no lookup leaves the machine (the shipped config has no
//! ACME email, so nothing is ordered either). Checks: a request through the
//! published ports reaches the tenant, the task runs as UID 65532 and turns healthy
//! through `wharf healthcheck`, `/metrics` answers on the loopback-only admin
//! listener, the static binary resolves names in a FROM-scratch image, and
//! `docker stack rm` leaves no service, container, network or config behind.
//! The swarm is initialised only if the Engine was not in one, and left again
//! (tests/common/docker.rs).

#![allow(clippy::unwrap_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::docker::{docker, free_port, labelled, try_docker, try_get, Engine};
use common::tls::AnyCert;

const NS: &str = "com.docker.stack.namespace";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A deployed stack: removed on drop (also when the test fails), waiting until its
/// objects are gone so that the engine guard can remove the network and images.
struct Stack {
    name: String,
    removed: bool,
}

impl Stack {
    /// `docker stack deploy --resolve-image never -c FILE ... NAME`, run from the
    /// repository root with `env` as the variables the stack files read.
    fn deploy(name: &str, files: &[&Path], env: &[(&str, String)]) -> Stack {
        let stack = Stack {
            name: name.to_string(),
            removed: false,
        };
        let mut cmd = Command::new("docker");
        // Detached is the CLI's default: this returns once the services exist.
        cmd.current_dir(repo())
            .args(["stack", "deploy", "--resolve-image", "never"]);
        for f in files {
            cmd.arg("-c").arg(f);
        }
        cmd.arg(name);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "docker stack deploy {name}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        stack
    }

    fn label(&self) -> String {
        format!("{NS}={}", self.name)
    }

    /// `docker stack rm`, then waits until none of the stack's services,
    /// containers, networks, configs or secrets is left. Volumes outlive
    /// `docker stack rm` by design; this test's are removed after that.
    fn remove(&mut self) -> Result<Duration, String> {
        self.removed = true;
        let t0 = Instant::now();
        try_docker(&["stack", "rm", &self.name])?;
        let label = self.label();
        let deadline = t0 + Duration::from_secs(60);
        loop {
            let mut left = Vec::new();
            for kind in ["service", "container", "network", "config", "secret"] {
                for n in labelled(kind, &label)? {
                    left.push(format!("{kind} {n}"));
                }
            }
            if left.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "still there 60 s after docker stack rm {}: {left:?}",
                    self.name
                ));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        let took = t0.elapsed();
        let mut volumes = labelled("volume", &label)?;
        volumes.push(format!("{}_wharf-data", self.name));
        volumes.sort();
        volumes.dedup();
        for v in volumes {
            if try_docker(&["volume", "inspect", &v]).is_ok() {
                try_docker(&["volume", "rm", &v])?;
            }
        }
        Ok(took)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(e) = self.remove() {
                eprintln!("{e}");
            }
        }
    }
}

/// The running task container of `service`, once there is one.
fn task_container(service: &str, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let running = try_docker(&[
            "ps",
            "-q",
            "--filter",
            &format!("label=com.docker.swarm.service.name={service}"),
            "--filter",
            "status=running",
        ])?;
        if let Some(id) = running.lines().next() {
            return Ok(id.to_string());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no running task of {service} after {within:?}:\n{}",
                try_docker(&[
                    "service",
                    "ps",
                    "--no-trunc",
                    "--format",
                    "{{.Name}} {{.CurrentState}} {{.Error}}",
                    service
                ])
                .unwrap_or_else(|e| e)
            ));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// `wharf healthcheck ARGS` inside the (shell-less) Wharf container.
fn healthcheck(container: &str, args: &[&str]) -> Result<String, String> {
    let mut all = vec!["exec", container, "/wharf", "healthcheck"];
    all.extend_from_slice(args);
    try_docker(&all)
}

/// GET over TLS (any certificate: with no ACME email Wharf serves a self-signed
/// one), `Connection: close`; the status and the raw body.
fn tls_get(addr: SocketAddr, host: &str, path: &str) -> Result<(u16, String), String> {
    let p = wharf_tls::provider();
    let cfg = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(p)))
        .with_no_client_auth();
    let name =
        rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|e| e.to_string())?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).map_err(|e| e.to_string())?;
    let tcp = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map_err(|e| format!("connect {addr}: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .map_err(|e| format!("TLS to {addr}: {e}"))?;
    let mut buf = Vec::new();
    if let Err(e) = tls.read_to_end(&mut buf) {
        // A peer that closes without close_notify: keep what came.
        if buf.is_empty() || e.kind() != std::io::ErrorKind::UnexpectedEof {
            return Err(format!("TLS read from {addr}: {e}"));
        }
    }
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").ok_or("no response head")?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or("no status line")?;
    Ok((status, body.to_string()))
}

/// Polls `f` every 250 ms until it returns `Ok`, for at most `within`.
fn eventually<T>(
    what: &str,
    within: Duration,
    mut f: impl FnMut() -> Result<T, String>,
) -> Result<(T, Duration), String> {
    let t0 = Instant::now();
    loop {
        match f() {
            Ok(v) => return Ok((v, t0.elapsed())),
            Err(e) if t0.elapsed() > within => {
                return Err(format!("{what}: not within {within:?}; last: {e}"))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(250)),
        }
    }
}

/// `/proc/<pid>/status`'s first number of `field` (`Uid`, `Gid`).
fn proc_id(pid: &str, field: &str) -> Option<u32> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// The label of the swarm configs holding Wharf's host ownership record.
const OWNERS: &str = "wharf.acme.kind=owners";

/// Removes the ownership record's configs on drop unless they predate the test.
struct OwnersRecord(bool);

impl Drop for OwnersRecord {
    fn drop(&mut self) {
        if !self.0 {
            for n in labelled("config", OWNERS).unwrap_or_default() {
                let _ = try_docker(&["config", "rm", &n]);
            }
        }
    }
}

#[test]
fn the_shipped_stack_deploys_routes_a_tenant_and_leaves_nothing_behind() {
    let t_start = Instant::now();
    let e = Engine::new("deploy");
    if let Err(err) = e.ensure_swarm() {
        panic!("docker swarm init failed on this engine: {err}");
    }
    // With swarm storage Wharf keeps its host ownership record in a config
    // (docs/discovery.md, "Host ownership"): removed after the test, unless one
    // was there before it (dropped after the stack, declared before it).
    let _owners = OwnersRecord(!labelled("config", OWNERS).unwrap_or_default().is_empty());

    // The shipped config and the example tenant's labels pass `wharf check`.
    let check = Command::new(env!("CARGO_BIN_EXE_wharf"))
        .current_dir(repo())
        .args([
            "check",
            "--config",
            "deploy/wharf.toml",
            "--compose",
            "deploy/example-tenant.yml",
        ])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&check.stdout).into_owned();
    assert!(
        check.status.success() && !said.contains("error") && !said.contains("warning"),
        "wharf check of deploy/: {said}"
    );

    // The image as an operator gets it: deploy/build-image.sh builds the static
    // release binary itself (fat LTO: about 10 CPU-minutes from a clean target, in
    // target/<host>/release, apart from the tests' debug build) and the image around
    // it. DEPLOY_TEST_STATIC=0, for a quick loop while working on deploy/: around
    // the binary under test instead, with its shared libraries.
    let image = format!("{}:latest", e.name("wharf"));
    e.adopt_image(&image);
    let t_build = Instant::now();
    let mut script = Command::new(repo().join("deploy/build-image.sh"));
    script.arg(&image).current_dir(repo());
    let static_build = !matches!(std::env::var("DEPLOY_TEST_STATIC").as_deref(), Ok("0"));
    if !static_build {
        script.env("WHARF_BIN", env!("CARGO_BIN_EXE_wharf"));
    }
    let built = script.output().unwrap();
    assert!(
        built.status.success(),
        "deploy/build-image.sh: {}",
        String::from_utf8_lossy(&built.stderr)
    );
    let build_took = t_build.elapsed();
    let config: serde_json::Value = serde_json::from_str(&docker(&[
        "image",
        "inspect",
        "--format",
        "{{json .Config}}",
        &image,
    ]))
    .unwrap();
    assert_eq!(config["User"], "65532:65532", "{config}");
    assert_eq!(
        config["Healthcheck"]["Test"],
        serde_json::json!(["CMD", "/wharf", "healthcheck"]),
        "{config}"
    );
    assert!(
        config["Env"]
            .to_string()
            .contains("SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"),
        "{config}"
    );
    // The binary starts in the image (with its libraries, when it is not static).
    let version = try_docker(&["run", "--rm", &image, "--version"])
        .unwrap_or_else(|e| panic!("the image's binary does not start: {e}"));
    assert!(version.starts_with("wharf "), "{version}");
    // The bundled CA roots (docker cp from a created, never started, container).
    let probe = e.name("probe");
    docker(&["create", "--name", &probe, &image]);
    let bundle = e.dir().join("ca.crt");
    let copied = try_docker(&[
        "cp",
        &format!("{probe}:/etc/ssl/certs/ca-certificates.crt"),
        bundle.to_str().unwrap(),
    ]);
    let _ = try_docker(&["rm", "-f", &probe]);
    copied.unwrap();
    let roots = std::fs::read_to_string(&bundle)
        .unwrap()
        .matches("BEGIN CERTIFICATE")
        .count();
    assert!(
        roots >= 50,
        "the image's CA bundle holds {roots} certificates"
    );

    // Wharf's stack: the shipped file, with the test's names, ports and DNS.
    let net = e.overlay("public");
    let (http_port, https_port) = (free_port(), free_port());
    let docker_gid = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata("/var/run/docker.sock").unwrap().gid()
    };
    let wharf_override = e.dir().join("wharf-override.yml");
    std::fs::write(
        &wharf_override,
        "version: \"3.8\"\nservices:\n  wharf:\n    dns: [127.0.0.1]\n    \
         environment:\n      WHARF_LOG: info\n    \
         healthcheck:\n      interval: 1s\n      start_period: 30s\n",
    )
    .unwrap();
    let env = vec![
        ("DOCKER_GID", docker_gid.to_string()),
        ("WHARF_IMAGE", image.clone()),
        ("WHARF_NETWORK", net.clone()),
        ("WHARF_HTTP_PORT", http_port.to_string()),
        ("WHARF_HTTPS_PORT", https_port.to_string()),
    ];
    let t_deploy = Instant::now();
    let wharf_stack = e.name("w");
    let mut wharf = Stack::deploy(
        &wharf_stack,
        &[Path::new("deploy/wharf-stack.yml"), &wharf_override],
        &env,
    );

    // The tenant: the example stack with the tests' web server and its own host name.
    let backend = e.backend_image();
    let host = format!("{}.test", e.name("app"));
    let tenant_override = e.dir().join("tenant-override.yml");
    std::fs::write(
        &tenant_override,
        format!(
            "version: \"3.8\"\nservices:\n  web:\n    image: {backend}\n    dns: [127.0.0.1]\n    \
             stop_grace_period: 1s\n    \
             deploy:\n      labels:\n        wharf.host: {host}\n"
        ),
    )
    .unwrap();
    let tenant_stack = e.name("t");
    let mut tenant = Stack::deploy(
        &tenant_stack,
        &[Path::new("deploy/example-tenant.yml"), &tenant_override],
        &env,
    );

    let service = format!("{wharf_stack}_wharf");
    let cid = task_container(&service, Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
    // What to show when a step fails: the tasks (with the Engine's error for each
    // that failed) and the last lines Wharf printed.
    let logs = || {
        let tasks = try_docker(&[
            "service",
            "ps",
            "--no-trunc",
            "--format",
            "{{.Name}} {{.CurrentState}} {{.Error}}",
            &service,
        ])
        .unwrap_or_else(|e| e);
        // Both streams: the runtime's own errors (a failed exec) come on stderr.
        let printed = Command::new("docker")
            .args(["service", "logs", "--raw", "--tail", "40", &service])
            .output()
            .map(|o| {
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                )
            })
            .unwrap_or_else(|e| e.to_string());
        format!("tasks of {service}:\n{tasks}\nlast lines it printed:\n{printed}")
    };

    // Through the published ports, as a client would: HTTP redirects to HTTPS, and
    // HTTPS reaches the tenant (both of its tasks, once their health checks pass).
    let http: SocketAddr = format!("127.0.0.1:{http_port}").parse().unwrap();
    let https: SocketAddr = format!("127.0.0.1:{https_port}").parse().unwrap();
    let ((), routed_after) =
        eventually(
            "the tenant over HTTPS",
            Duration::from_secs(60),
            || match tls_get(https, &host, "/")? {
                (200, body) if body.contains("hello from busybox") => Ok(()),
                (status, body) => Err(format!("{status} {body}")),
            },
        )
        .unwrap_or_else(|err| panic!("{err}\n{}", logs()));
    let redirect = try_get(http, &host, "/").unwrap();
    assert_eq!(redirect.status, 301, "{}", redirect.text());
    assert_eq!(
        redirect.header("location"),
        Some(format!("https://{host}/").as_str())
    );
    let mut seen = std::collections::BTreeSet::new();
    eventually(
        "requests on both tenant tasks",
        Duration::from_secs(30),
        || {
            let (status, body) = tls_get(https, &host, "/cgi-bin/id")?;
            if status == 200 {
                seen.insert(body.trim().to_string());
            }
            (seen.len() >= 2).then_some(()).ok_or(format!("{seen:?}"))
        },
    )
    .unwrap_or_else(|err| panic!("{err}\n{}", logs()));

    // Not root, yet bound to 80 and 443 in its container (the sysctl of the stack).
    let pid = docker(&["inspect", "--format", "{{.State.Pid}}", &cid]);
    assert_eq!(proc_id(&pid, "Uid"), Some(65532));
    assert_eq!(proc_id(&pid, "Gid"), Some(docker_gid));
    let sysctls = docker(&["inspect", "--format", "{{json .HostConfig.Sysctls}}", &cid]);
    assert!(
        sysctls.contains("\"net.ipv4.ip_unprivileged_port_start\":\"0\""),
        "{sysctls}"
    );
    // The state volume belongs to the runtime user.
    let mountpoint = docker(&[
        "volume",
        "inspect",
        "--format",
        "{{.Mountpoint}}",
        &format!("{wharf_stack}_wharf-data"),
    ]);
    let owner = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&mountpoint).unwrap().uid()
    };
    assert_eq!(owner, 65532, "owner of {mountpoint}");

    // The image's HEALTHCHECK (`wharf healthcheck`, no shell) turns the task healthy.
    eventually("a healthy Wharf task", Duration::from_secs(30), || {
        let s = try_docker(&["inspect", "--format", "{{.State.Health.Status}}", &cid])?;
        (s == "healthy").then_some(()).ok_or(s)
    })
    .unwrap_or_else(|err| panic!("{err}\n{}", logs()));

    // /metrics and /api on the admin listener, which only the container's loopback
    // reaches: read with `wharf healthcheck --body` through docker exec.
    let metrics = healthcheck(&cid, &["--url", "http://127.0.0.1:8082/metrics", "--body"])
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(metrics.contains("\nwharf_routes "), "{metrics}");
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wharf_requests_total{")
                && (l.contains(&host) || l.contains(&tenant_stack))),
        "no request counted for {host}:\n{metrics}"
    );
    let routes = healthcheck(
        &cid,
        &["--url", "http://127.0.0.1:8082/api/routes", "--body"],
    )
    .unwrap_or_else(|err| panic!("{err}"));
    let routes: serde_json::Value = serde_json::from_str(&routes).unwrap();
    let ours = routes
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["hosts"].to_string().contains(&host))
        .unwrap_or_else(|| panic!("no route for {host}: {routes}"));
    assert_eq!(ours["backends"].as_array().map(Vec::len), Some(2), "{ours}");
    // The admin listener is on loopback only: nothing answers on the overlay.
    let overlay_ip = docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &cid,
    ]);
    assert!(
        healthcheck(&cid, &["--url", &format!("http://{overlay_ip}:8082/ping")]).is_err(),
        "the admin listener answers on {net} ({overlay_ip})"
    );
    // Names resolve in the FROM-scratch image through the C library, as the ACME
    // client resolves its directory's: /etc/hosts, and Docker's DNS (the tenant's
    // tasks; the service's virtual IP is not used since Wharf reaches tasks directly).
    healthcheck(&cid, &["--url", "http://localhost:8082/ping"]).unwrap_or_else(|e| panic!("{e}"));
    healthcheck(
        &cid,
        &["--url", &format!("http://tasks.{tenant_stack}_web/")],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let deployed_for = t_deploy.elapsed();

    // docker stack rm leaves no service, container, network or config behind.
    let tenant_rm = tenant.remove().unwrap_or_else(|e| panic!("{e}"));
    let wharf_rm = wharf.remove().unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "deploy: image ({}) built in {build_took:?}; stack deploy -> tenant routed over HTTPS in \
         {routed_after:?}; deploy and checks {deployed_for:?}; stack rm tenant {tenant_rm:?}, \
         wharf {wharf_rm:?}; whole test {:?}",
        if static_build {
            "static release binary"
        } else {
            "the test's binary"
        },
        t_start.elapsed()
    );
}
