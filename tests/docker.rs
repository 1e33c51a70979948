//! End-to-end tests of discovery against the machine's real Docker Engine:
//! labelled containers on a user-defined bridge network (reached from the host),
//! and swarm services on an attachable overlay network, where Wharf itself runs
//! in a container on that network (the host has no route to overlay addresses).
//! Every object is named with a unique prefix and removed on drop.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::docker::{docker, poll_until, try_get, Engine};
use common::*;

fn docker_config(mode: &str, network: &str) -> String {
    base_config().replace(
        "[docker]\nmode = \"off\"\n",
        &format!(
            "[docker]\nmode = \"{mode}\"\nnetwork = \"{network}\"\npoll_interval = \"500ms\"\n"
        ),
    )
}

/// Wharf on the containers of `network`, once its first listing is done.
fn containers_wharf(network: &str) -> Wharf {
    let mut w = Wharf::start(&docker_config("containers", network));
    w.wait_log("docker: connected and listed").unwrap();
    w
}

fn errors_mention(w: &Wharf, needle: &str) -> bool {
    w.api("/api/errors").to_string().contains(needle)
}

#[test]
fn labelled_container_is_routed_fast_and_errors_stay_with_their_container() {
    let e = Engine::new("ctr");
    let net = e.bridge("net");
    let image = e.backend_image();
    let w = containers_wharf(&net);
    let web = w.ep("web");

    // 1. `docker run` to the first routed 200.
    let host = format!("{}.test", e.name("a"));
    let t0 = Instant::now();
    let a = e.run(
        "a",
        &[
            "--network",
            &net,
            "--hostname",
            "backend-a",
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.host={host}"),
            &image,
        ],
    );
    let cli = t0.elapsed();
    let (r, at) = poll_until(web, &host, "/cgi-bin/id", Duration::from_secs(10), |r| {
        r.status == 200
    })
    .unwrap();
    let elapsed = at - t0;
    eprintln!("docker run -> first routed 200: {elapsed:?} (the CLI returned after {cli:?})");
    assert_eq!(r.text().trim(), "backend-a");
    assert!(elapsed < Duration::from_secs(5), "took {elapsed:?}");

    // Traefik v2 labels route without relabelling.
    let thost = format!("t.{host}");
    e.run(
        "traefik",
        &[
            "--network",
            &net,
            "--hostname",
            "backend-t",
            "--label",
            "traefik.enable=true",
            "--label",
            &format!("traefik.http.routers.r.rule=Host(`{thost}`)"),
            "--label",
            "traefik.http.services.s.loadbalancer.server.port=80",
            &image,
        ],
    );
    poll_until(web, &thost, "/cgi-bin/id", Duration::from_secs(10), |r| {
        r.text().trim() == "backend-t"
    })
    .unwrap();

    // 2. A typo in another container's labels is an error for that container
    //    alone, with a suggestion; the first keeps working.
    let typo = e.run(
        "typo",
        &[
            "--network",
            &net,
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.hots=typo.{host}"),
            &image,
        ],
    );
    wait_until("the typo in /api/errors", Duration::from_secs(10), || {
        errors_mention(&w, &typo)
    });
    let errs = w.api("/api/errors").to_string();
    assert!(errs.contains("wharf.hots"), "{errs}");
    assert!(errs.contains("did you mean"), "{errs}");
    assert_eq!(try_get(web, &host, "/").unwrap().status, 200);

    // 3. A second container claiming the same host: an error naming both; the
    //    first claimant keeps the host.
    let b = e.run(
        "b",
        &[
            "--network",
            &net,
            "--hostname",
            "backend-b",
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.host={host}"),
            &image,
        ],
    );
    wait_until(
        "the host conflict in /api/errors",
        Duration::from_secs(10),
        || errors_mention(&w, &format!("{b}@docker")),
    );
    let errs = w.api("/api/errors").to_string();
    assert!(errs.contains(&format!("{a}@docker")), "{errs}");
    for _ in 0..5 {
        assert_eq!(
            try_get(web, &host, "/cgi-bin/id").unwrap().text().trim(),
            "backend-a"
        );
    }

    // 4. The first claimant stops: the host stays reserved for its owner
    //    (docs/discovery.md, "Host ownership"), so the other container does not
    //    inherit it; the error says so.
    docker(&["rm", "-f", &a]);
    poll_until(web, &host, "/cgi-bin/id", Duration::from_secs(10), |r| {
        r.status == 404
    })
    .unwrap();
    wait_until(
        "the reservation in /api/errors",
        Duration::from_secs(10),
        || errors_mention(&w, "it is gone now"),
    );

    // The swap was logged as a one-line diff.
    assert!(w.logs().iter().any(|l| l["message"]
        .as_str()
        .is_some_and(|m| m.contains("removed: ") && m.contains(&a))));
}

#[test]
fn unhealthy_container_is_drained_and_answers_503() {
    let e = Engine::new("health");
    let net = e.bridge("net");
    let image = e.backend_image();
    let w = Wharf::start(&docker_config("containers", &net));
    let web = w.ep("web");
    let host = format!("{}.test", e.name("h"));
    // Healthy while /www/ok exists; the test removes it.
    let c = e.run(
        "h",
        &[
            "--network",
            &net,
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.host={host}"),
            "--health-cmd",
            "/bin/busybox test -e /www/index.html",
            "--health-interval",
            "300ms",
            "--health-retries",
            "1",
            &image,
        ],
    );
    poll_until(web, &host, "/", Duration::from_secs(10), |r| {
        r.status == 200
    })
    .unwrap();
    docker(&["exec", &c, "/bin/busybox", "rm", "/www/index.html"]);
    let (r, _) = poll_until(web, &host, "/", Duration::from_secs(15), |r| {
        r.status == 503
    })
    .unwrap();
    assert!(r.header("retry-after").is_some(), "{:?}", r.headers);
    let routes = w.api("/api/routes").to_string();
    assert!(routes.contains("draining"), "{routes}");
}

#[test]
fn unreachable_docker_keeps_file_routes_and_says_so() {
    let b = Backend::start("file");
    let cfg = base_config().replace(
        "[docker]\nmode = \"off\"\n",
        "[docker]\nmode = \"containers\"\nendpoint = \"unix:///nonexistent/docker.sock\"\n",
    ) + &route("file.test", "/", &[b.addr], "");
    let mut w = Wharf::start(&cfg);
    w.wait_log("docker: unreachable").unwrap();
    assert_eq!(get(w.ep("web"), "file.test", "/").status, 200);
    wait_until(
        "the docker error in /api/errors",
        Duration::from_secs(5),
        || errors_mention(&w, "unreachable"),
    );
    let n = w
        .logs()
        .iter()
        .filter(|l| {
            l["message"]
                .as_str()
                .is_some_and(|m| m.contains("docker: unreachable"))
        })
        .count();
    assert_eq!(n, 1, "the state change is logged once");
    assert!(
        w.child.try_wait().unwrap().is_none(),
        "wharf is still running"
    );
}

/// How long before `at` the service's first task reached `running`, by the
/// Engine's own timestamp.
fn task_running_for(svc: &str, at: std::time::SystemTime) -> Option<Duration> {
    let task = docker(&[
        "service",
        "ps",
        "-q",
        "--filter",
        "desired-state=running",
        svc,
    ]);
    let ts = docker(&[
        "inspect",
        "--format",
        "{{.Status.Timestamp}}",
        task.lines().next()?,
    ]);
    let out = std::process::Command::new("date")
        .args(["-d", ts.trim_end_matches(" UTC"), "+%s.%N"])
        .output()
        .ok()?;
    let secs: f64 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    let at = at.duration_since(std::time::UNIX_EPOCH).ok()?.as_secs_f64();
    Some(Duration::from_secs_f64((at - secs).max(0.0)))
}

/// Swarm: services created, scaled, relabelled, emptied and removed, plus a
/// dnsrr service, with Wharf in a container on the overlay network.
#[test]
fn swarm_services_follow_create_scale_labels_and_dnsrr() {
    let e = Engine::new("swarm");
    if let Err(err) = e.ensure_swarm() {
        panic!("docker swarm init failed on this engine: {err}");
    }
    let net = e.overlay("net");
    let backend = e.backend_image();
    let wharf = e.wharf_image();
    let cfg_dir = e.dir().join("etc");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::write(
        cfg_dir.join("wharf.toml"),
        format!(
            "[entrypoints.web]\naddress = \"0.0.0.0:8080\"\n\n[admin]\naddress = \"0.0.0.0:8082\"\n\n\
             [docker]\nmode = \"swarm\"\nnetwork = \"{net}\"\npoll_interval = \"500ms\"\n\n\
             [dns]\nrefresh = \"1s\"\n"
        ),
    )
    .unwrap();
    let proxy = e.run(
        "proxy",
        &[
            "--network",
            &net,
            "-v",
            "/var/run/docker.sock:/var/run/docker.sock",
            "-v",
            &format!("{}:/etc/wharf:ro", cfg_dir.display()),
            "-p",
            "127.0.0.1::8080",
            "-p",
            "127.0.0.1::8082",
            "-e",
            "WHARF_LOG=info",
            &wharf,
            "--log-format",
            "json",
            "run",
            "--config",
            "/etc/wharf/wharf.toml",
        ],
    );
    let web = e.published(&proxy, 8080);
    let admin = e.published(&proxy, 8082);
    let logs = || docker(&["logs", &proxy]);
    poll_until(admin, "admin", "/ping", Duration::from_secs(20), |r| {
        r.status == 200
    })
    .unwrap_or_else(|err| panic!("{err}\n{}", logs()));
    let api = |path: &str| -> serde_json::Value {
        serde_json::from_slice(&try_get(admin, "admin", path).unwrap().body).unwrap()
    };

    // Create → first 200.
    let host = format!("{}.test", e.name("s"));
    let t0 = Instant::now();
    let svc = e.service(
        "s",
        &[
            "--network",
            &net,
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.host={host}"),
            &backend,
        ],
    );
    let cli = t0.elapsed();
    let (_, at) = poll_until(web, &host, "/", Duration::from_secs(30), |r| {
        r.status == 200
    })
    .unwrap_or_else(|err| panic!("{err}\n{}", logs()));
    let served = std::time::SystemTime::now();
    eprintln!(
        "docker service create -> first routed 200: {:?} (the CLI returned after {cli:?}; \
         the task was running {:?} before the first 200)",
        at - t0,
        task_running_for(&svc, served)
    );

    // Scale → every task is a backend, and requests reach several of them.
    let t1 = Instant::now();
    docker(&["service", "scale", "-d", &format!("{svc}=3")]);
    let backends = |api: &dyn Fn(&str) -> serde_json::Value| -> usize {
        api("/api/routes")
            .as_array()
            .into_iter()
            .flatten()
            .filter(|r| r["hosts"].to_string().contains(&host))
            .map(|r| r["backends"].as_array().map_or(0, |b| b.len()))
            .sum()
    };
    wait_until("3 backends", Duration::from_secs(30), || {
        backends(&api) == 3
    });
    eprintln!(
        "docker service scale 1->3 -> 3 backends: {:?}",
        t1.elapsed()
    );
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..30 {
        seen.insert(try_get(web, &host, "/cgi-bin/id").unwrap().text());
    }
    assert!(seen.len() >= 2, "requests reached {seen:?}");

    // Invalid new labels: an error, and the last good routes stay.
    docker(&[
        "service",
        "update",
        "-d",
        "--label-add",
        "wharf.port=eighty",
        &svc,
    ]);
    wait_until("the label error", Duration::from_secs(30), || {
        api("/api/errors").to_string().contains("wharf.port")
    });
    assert_eq!(try_get(web, &host, "/").unwrap().status, 200);
    docker(&["service", "update", "-d", "--label-rm", "wharf.port", &svc]);

    // Between tasks: 503 with Retry-After, not 404.
    docker(&["service", "scale", "-d", &format!("{svc}=0")]);
    let (r, _) = poll_until(web, &host, "/", Duration::from_secs(30), |r| {
        r.status == 503
    })
    .unwrap_or_else(|err| panic!("{err}\n{}", logs()));
    assert!(r.header("retry-after").is_some());

    // dnsrr: tasks found through Docker's DNS (tasks.<service>).
    let dhost = format!("{}.test", e.name("d"));
    let t2 = Instant::now();
    let dsvc = e.service(
        "d",
        &[
            "--network",
            &net,
            "--endpoint-mode",
            "dnsrr",
            "--replicas",
            "2",
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.host={dhost}"),
            &backend,
        ],
    );
    poll_until(web, &dhost, "/", Duration::from_secs(30), |r| {
        r.status == 200
    })
    .unwrap_or_else(|err| panic!("{err}\n{}", logs()));
    eprintln!(
        "dnsrr service create -> first routed 200: {:?} (the first task was running {:?} before)",
        t2.elapsed(),
        task_running_for(&dsvc, std::time::SystemTime::now())
    );

    // Removed → 404.
    docker(&["service", "rm", &svc]);
    poll_until(web, &host, "/", Duration::from_secs(30), |r| {
        r.status == 404
    })
    .unwrap_or_else(|err| panic!("{err}\n{}", logs()));
}

/// The `/api/routes` entry whose hosts include `host`.
fn route_for(w: &Wharf, host: &str) -> Option<serde_json::Value> {
    w.api("/api/routes")
        .as_array()?
        .iter()
        .find(|r| {
            r["hosts"]
                .as_array()
                .is_some_and(|h| h.iter().any(|x| x == host))
        })
        .cloned()
}

/// Traefik v1 `traefik.backend.healthcheck.*` and v2
/// `traefik.http.services.<s>.loadbalancer.healthcheck.*` labels drive the active
/// checker: the route shows the check, the backend's last check is filled in, a
/// health path that answers 404 (busybox httpd, file missing) takes the backend
/// out (503), and creating the file brings it back.
#[test]
fn traefik_v1_and_v2_healthcheck_labels_enable_active_checks() {
    let e = Engine::new("tkhc");
    let net = e.bridge("net");
    let image = e.backend_image();
    let w = containers_wharf(&net);
    let web = w.ep("web");
    let h1 = format!("{}.test", e.name("v1"));
    let h2 = format!("{}.test", e.name("v2"));
    let v1 = e.run(
        "v1",
        &[
            "--network",
            &net,
            "--label",
            "traefik.enable=true",
            "--label",
            &format!("traefik.frontend.rule=Host:{h1}"),
            "--label",
            "traefik.port=80",
            "--label",
            "traefik.backend.healthcheck.path=/health",
            "--label",
            "traefik.backend.healthcheck.interval=1s",
            &image,
        ],
    );
    let v2 = e.run(
        "v2",
        &[
            "--network",
            &net,
            "--label",
            "traefik.enable=true",
            "--label",
            &format!("traefik.http.routers.r.rule=Host(`{h2}`)"),
            "--label",
            "traefik.http.services.s.loadbalancer.server.port=80",
            "--label",
            "traefik.http.services.s.loadbalancer.healthcheck.path=/health",
            "--label",
            "traefik.http.services.s.loadbalancer.healthcheck.interval=1s",
            &image,
        ],
    );
    for (host, ctr) in [(&h1, &v1), (&h2, &v2)] {
        // No /www/health yet: the checks get 404 and take the backend out.
        wait_until(
            &format!("{ctr}: route with a failed check"),
            Duration::from_secs(20),
            || {
                route_for(&w, host).is_some_and(|r| {
                    r["backends"][0]["health"] == "down"
                        && r["backends"][0]["last_check"]["status"] == 404
                })
            },
        );
        let r = route_for(&w, host).unwrap();
        assert_eq!(r["healthcheck"]["path"], "/health", "{r:#}");
        assert_eq!(r["healthcheck"]["interval_ms"], 1000, "{r:#}");
        assert!(r["backends"][0]["last_check"]["time"].is_string(), "{r:#}");
        let (resp, _) =
            poll_until(web, host, "/", Duration::from_secs(5), |r| r.status == 503).unwrap();
        assert!(resp.header("retry-after").is_some(), "{:?}", resp.headers);
        let addr: std::net::SocketAddr = r["backends"][0]["address"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap();
        let down = w.wait_logs_for("backend down", addr, 1);
        assert_eq!(down.len(), 1, "{host}: one line per transition: {down:#?}");
        assert_eq!(down[0]["route"], r["name"], "{:#}", down[0]);

        // The health path appears: back in.
        docker(&[
            "exec",
            ctr,
            "/bin/busybox",
            "sh",
            "-c",
            "echo ok > /www/health",
        ]);
        let t0 = Instant::now();
        poll_until(web, host, "/", Duration::from_secs(10), |r| r.status == 200).unwrap();
        eprintln!(
            "{host}: health file created -> 200 after {:?}",
            t0.elapsed()
        );
        let r = route_for(&w, host).unwrap();
        assert_eq!(r["backends"][0]["health"], "up", "{r:#}");
        assert_eq!(r["backends"][0]["last_check"]["status"], 200, "{r:#}");
    }
    // No warning (such as the old "accepted but inert") about these labels.
    let errs = w.api("/api/errors");
    for err in errs.as_array().into_iter().flatten() {
        let text = err.to_string();
        assert!(
            !(text.contains(&v1) || text.contains(&v2)) || !text.contains("healthcheck"),
            "{err:#}"
        );
    }
}

/// `ratelimit.scope = "cluster"`: two Wharf containers of one compose service
/// (by their compose labels) find each other through Docker and each enforces
/// half the route's rate; when one goes, the other enforces all of it.
#[test]
fn cluster_rate_limit_is_shared_by_compose_replicas() {
    let t0 = Instant::now();
    let e = Engine::new("rlc");
    let net = e.bridge("net");
    let backend_image = e.backend_image();
    let wharf = e.wharf_image();
    let be = e.run("be", &["--network", &net, &backend_image]);
    let be_ip = docker(&[
        "inspect",
        "--format",
        &format!("{{{{(index .NetworkSettings.Networks \"{net}\").IPAddress}}}}"),
        &be,
    ]);
    let be_addr: std::net::SocketAddr = format!("{be_ip}:80").parse().unwrap();
    let host = format!("{}.test", e.name("rl"));
    let cfg_dir = e.dir().join("etc");
    std::fs::create_dir_all(&cfg_dir).unwrap();
    std::fs::write(
        cfg_dir.join("wharf.toml"),
        format!(
            "[entrypoints.web]\naddress = \"0.0.0.0:8080\"\n\n[admin]\naddress = \"0.0.0.0:8082\"\n\n\
             [docker]\nmode = \"containers\"\nnetwork = \"{net}\"\npoll_interval = \"500ms\"\n\n{}",
            route(
                &host,
                "/",
                &[be_addr],
                "ratelimit = { rate = \"10/s\", burst = 10, key = \"route\", scope = \"cluster\" }",
            )
        ),
    )
    .unwrap();
    let project = e.name("proj");
    let replica = |what: &str| {
        e.run(
            what,
            &[
                "--network",
                &net,
                "--label",
                &format!("com.docker.compose.project={project}"),
                "--label",
                "com.docker.compose.service=wharf",
                "-v",
                "/var/run/docker.sock:/var/run/docker.sock",
                "-v",
                &format!("{}:/etc/wharf:ro", cfg_dir.display()),
                "-p",
                "127.0.0.1::8080",
                "-p",
                "127.0.0.1::8082",
                "-e",
                "WHARF_LOG=info",
                &wharf,
                "--log-format",
                "json",
                "run",
                "--config",
                "/etc/wharf/wharf.toml",
            ],
        )
    };
    let one = replica("w1");
    let two = replica("w2");
    // Wharf logs to stderr, which `docker logs` passes through as stderr.
    let logs = |c: &str| {
        let out = std::process::Command::new("docker")
            .args(["logs", c])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    };
    let replicas = |admin: std::net::SocketAddr| -> Option<u64> {
        let r = try_get(admin, "admin", "/api/routes").ok()?;
        let routes: serde_json::Value = serde_json::from_slice(&r.body).ok()?;
        routes
            .as_array()?
            .iter()
            .find(|r| r["hosts"].to_string().contains(&host))?["ratelimit"]["replicas"]
            .as_u64()
    };
    let admins: Vec<_> = [&one, &two]
        .iter()
        .map(|c| (c.to_string(), e.published(c, 8082)))
        .collect();
    for (c, admin) in &admins {
        let t = Instant::now();
        while replicas(*admin) != Some(2) {
            assert!(
                t.elapsed() < Duration::from_secs(20),
                "{c}: ratelimit.replicas is {:?}, not 2\n{}",
                replicas(*admin),
                logs(c)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    eprintln!("both replicas see 2 after {:?}", t0.elapsed());
    let log = logs(&one);
    assert!(
        log.contains("rate limits with scope = cluster: 2 replicas share each rate"),
        "{log}"
    );
    // The backend answers (directly, so no request spends the route's budget).
    poll_until(be_addr, "be", "/", Duration::from_secs(10), |r| {
        r.status == 200
    })
    .unwrap();

    // 20 requests at once to one replica: rate 10/s and burst 10 shared by 2
    // replicas is a burst of 5 here.
    let web = e.published(&one, 8080);
    let start = std::sync::Arc::new(std::sync::Barrier::new(20));
    let answers: Vec<_> = (0..20)
        .map(|_| {
            let start = start.clone();
            let host = host.clone();
            std::thread::spawn(move || {
                start.wait();
                try_get(web, &host, "/").unwrap()
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().unwrap())
        .collect();
    let passed = answers.iter().filter(|r| r.status == 200).count();
    let limited: Vec<_> = answers.iter().filter(|r| r.status == 429).collect();
    assert_eq!(
        passed,
        5,
        "{:?}",
        answers.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(limited.len(), 15);
    for r in limited {
        let secs: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!(secs >= 1, "Retry-After: {secs}");
    }

    // One replica goes: the other enforces the whole rate.
    docker(&["rm", "-f", &two]);
    let t = Instant::now();
    let (c, admin) = &admins[0];
    while replicas(*admin) != Some(1) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{c}: ratelimit.replicas is {:?}, not 1\n{}",
            replicas(*admin),
            logs(c)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    eprintln!(
        "replicas == 1 {:?} after the second replica was removed; test took {:?}",
        t.elapsed(),
        t0.elapsed()
    );
}

/// `docker-compose` (v1) or `docker compose` (v2), whichever this machine has.
fn compose_command() -> Option<Vec<String>> {
    let works = |cmd: &[&str]| {
        std::process::Command::new(cmd[0])
            .args(&cmd[1..])
            .arg("version")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    [&["docker", "compose"][..], &["docker-compose"][..]]
        .into_iter()
        .find(|c| works(c))
        .map(|c| c.iter().map(|s| s.to_string()).collect())
}

/// A compose project, taken down (containers and its network) on drop, also
/// when the test fails.
struct Project {
    cmd: Vec<String>,
    name: String,
    file: std::path::PathBuf,
}

impl Project {
    fn new(cmd: &[String], name: String, dir: &std::path::Path, yaml: &str) -> Project {
        let file = dir.join(format!("{name}.yml"));
        std::fs::write(&file, yaml).unwrap();
        Project {
            cmd: cmd.to_vec(),
            name,
            file,
        }
    }

    fn run(&self, args: &[&str]) -> Result<String, String> {
        let out = std::process::Command::new(&self.cmd[0])
            .args(&self.cmd[1..])
            .args(["-p", &self.name, "-f"])
            .arg(&self.file)
            .args(args)
            .output()
            .map_err(|e| e.to_string())?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned()
            + &String::from_utf8_lossy(&out.stderr);
        if out.status.success() {
            Ok(text)
        } else {
            Err(text)
        }
    }
}

impl Drop for Project {
    fn drop(&mut self) {
        let _ = self.run(&["down", "-v", "--remove-orphans", "-t", "1"]);
    }
}

/// Host ownership against real containers (docs/discovery.md, "Host
/// ownership"): `docker compose up --scale web=3` is one route with three
/// backends and requests reach all three; a second project claiming the same
/// host, a container taking a longer path under it, and a `*` label are each an
/// error in /api/errors, and the first project is still served throughout.
#[test]
fn compose_replicas_are_one_owner_and_other_owners_are_refused() {
    let Some(cmd) = compose_command() else {
        panic!("this test needs docker-compose or the docker compose plugin");
    };
    let e = Engine::new("own");
    let net = e.bridge("net");
    e.backend_image();
    let image = format!("{}:latest", e.name("backend"));
    let state = e.dir().join("state");
    let mut w = Wharf::start(&format!(
        "{}[acme]\nstorage = \"file:{}\"\n",
        docker_config("containers", &net),
        state.display()
    ));
    w.wait_log("docker: connected and listed").unwrap();
    let web = w.ep("web");
    let host = format!("{}.test", e.name("shop"));
    let yaml = |service: &str| {
        format!(
            "version: \"2.4\"\nservices:\n  {service}:\n    image: {image}\n    dns: 127.0.0.1\n    \
             networks: [pub]\n    labels:\n      wharf.enable: \"true\"\n      wharf.host: {host}\n\
             networks:\n  pub:\n    external: true\n    name: {net}\n"
        )
    };
    let shop = Project::new(&cmd, e.name("shop").replace('-', ""), e.dir(), &yaml("web"));
    shop.run(&["up", "-d", "--scale", "web=3"])
        .unwrap_or_else(|err| panic!("compose up: {err}"));
    let owner = format!("compose:{}", shop.name);

    // One route with three backends.
    let t = Instant::now();
    loop {
        let n = route_for(&w, &host)
            .and_then(|r| r["backends"].as_array().map(Vec::len))
            .unwrap_or(0);
        if n == 3 {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "route has {n} backends: {}\nerrors: {}",
            w.api("/api/routes"),
            w.api("/api/errors")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        !errors_mention(&w, &host),
        "replicas are no conflict: {}",
        w.api("/api/errors")
    );
    // Every replica answers (round robin: 3 requests in a row, a few rounds).
    let ids = |n: usize| -> std::collections::BTreeSet<String> {
        (0..n)
            .filter_map(|_| try_get(web, &host, "/cgi-bin/id").ok())
            .filter(|r| r.status == 200)
            .map(|r| String::from_utf8_lossy(&r.body).trim().to_string())
            .collect()
    };
    let first = {
        let t = Instant::now();
        loop {
            let seen = ids(12);
            if seen.len() == 3 || t.elapsed() > Duration::from_secs(10) {
                break seen;
            }
        }
    };
    assert_eq!(first.len(), 3, "replicas answering: {first:?}");

    // A second project claims the same host: refused, the first still served.
    let other = Project::new(
        &cmd,
        e.name("other").replace('-', ""),
        e.dir(),
        &yaml("web"),
    );
    other
        .run(&["up", "-d"])
        .unwrap_or_else(|err| panic!("compose up: {err}"));
    // A lone container takes a longer path under the host.
    let squat = e.run(
        "squat",
        &[
            "--network",
            &net,
            "--label",
            "wharf.enable=true",
            "--label",
            &format!("wharf.host={host}"),
            "--label",
            "wharf.path=/cgi-bin",
            &image,
        ],
    );
    // And one claims every host.
    let star = e.run(
        "star",
        &[
            "--network",
            &net,
            "--label",
            "wharf.enable=true",
            "--label",
            "wharf.host=*",
            &image,
        ],
    );
    let t = Instant::now();
    let wanted = [
        format!("container {}-web", other.name),
        format!("container {squat}"),
        format!("container {star}"),
    ];
    loop {
        let errors = w.api("/api/errors");
        let found = |service: &str, needle: &str| {
            errors.as_array().into_iter().flatten().any(|p| {
                p["service"] == service && p["message"].as_str().unwrap_or("").contains(needle)
            })
        };
        if found(&wanted[0], &format!("belongs to `{owner}`"))
            && found(&wanted[1], &format!("belongs to `{owner}`"))
            && found(&wanted[2], "allow_wildcards")
        {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "refusals not reported: {errors}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Still the first project's three replicas, on every path.
    let after = ids(12);
    assert_eq!(after, first, "the first project keeps the host");
    let route = route_for(&w, &host).unwrap();
    assert_eq!(route["backends"].as_array().unwrap().len(), 3, "{route}");
    // Nothing catches unknown hosts.
    let r = try_get(web, "unknown.test", "/").unwrap();
    assert_eq!(r.status, 404);
    // The ownership record is on disk.
    let record = std::fs::read_to_string(state.join("owners.json")).unwrap();
    assert!(record.contains(&owner), "{record}");
}

/// Traefik middlewares on real containers (review H1): basicauth and ipallowlist
/// are enforced, and a middleware Wharf cannot see (`auth@file`) refuses the
/// router instead of serving it open, with the reason in /api/errors.
#[test]
fn traefik_basicauth_and_ipallowlist_are_enforced_and_auth_at_file_is_refused() {
    let e = Engine::new("mw");
    let net = e.bridge("net");
    let image = e.backend_image();
    let w = containers_wharf(&net);
    let web = w.ep("web");
    let host = format!("{}.test", e.name("adm"));
    let run = |what: &str, host: &str, extra: &[&str]| {
        let rule = format!("traefik.http.routers.adm.rule=Host(`{host}`)");
        let mut args = vec![
            "--network",
            &net,
            "--hostname",
            "backend-adm",
            "--label",
            "traefik.enable=true",
            "--label",
            &rule,
            "--label",
            "traefik.http.services.adm.loadbalancer.server.port=80",
        ];
        for l in extra {
            args.push("--label");
            args.push(l);
        }
        args.push(&image);
        e.run(what, &args)
    };
    // `openssl passwd -apr1 -salt xxxxxxxx password`.
    run(
        "adm",
        &host,
        &[
            "traefik.http.routers.adm.middlewares=auth,ip",
            "traefik.http.middlewares.auth.basicauth.users=admin:$apr1$xxxxxxxx$dxHfLAsjHkDRmG83UXe8K0",
            "traefik.http.middlewares.ip.ipallowlist.sourcerange=127.0.0.0/8,::1/128",
        ],
    );
    let (r, _) = poll_until(web, &host, "/cgi-bin/id", Duration::from_secs(10), |r| {
        r.status == 401
    })
    .unwrap();
    assert_eq!(
        r.header("www-authenticate"),
        Some("Basic realm=\"traefik\"")
    );
    let authed = |host: &str, cred: &str| {
        raw(
            web,
            format!(
                "GET /cgi-bin/id HTTP/1.1\r\nHost: {host}\r\nAuthorization: Basic {cred}\r\n\
                 Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
    };
    // admin:password / admin:wrong
    let r = authed(&host, "YWRtaW46cGFzc3dvcmQ=");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.text().trim(), "backend-adm");
    assert_eq!(authed(&host, "YWRtaW46d3Jvbmc=").status, 401);

    // An allow-list the client (loopback) is not in: 403 before any credential.
    let deny = format!("deny.{host}");
    run(
        "deny",
        &deny,
        &[
            "traefik.http.routers.adm.middlewares=ip",
            "traefik.http.middlewares.ip.ipwhitelist.sourcerange=203.0.113.0/24",
        ],
    );
    let (r, _) = poll_until(web, &deny, "/cgi-bin/id", Duration::from_secs(10), |r| {
        r.status != 404
    })
    .unwrap();
    assert_eq!(r.status, 403, "{}", r.text());

    // `auth@file` names a middleware Wharf cannot see: the router is refused.
    let open = format!("open.{host}");
    let refused = run(
        "file",
        &open,
        &["traefik.http.routers.adm.middlewares=auth@file"],
    );
    wait_until("auth@file in /api/errors", Duration::from_secs(10), || {
        errors_mention(&w, &refused)
    });
    let errs = w.api("/api/errors").to_string();
    assert!(
        errs.contains("auth@file") && errs.contains("fail closed"),
        "{errs}"
    );
    assert!(
        errs.contains("traefik.http.routers.adm.middlewares"),
        "{errs}"
    );
    assert_eq!(try_get(web, &open, "/cgi-bin/id").unwrap().status, 404);
    // The secret never shows: basicauth values are redacted in problems.
    assert!(!errs.contains("$apr1$"), "{errs}");
}
