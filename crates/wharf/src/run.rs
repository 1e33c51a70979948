//! `wharf run`: wires the control plane, the data plane and the admin listener, then
//! waits for signals: SIGHUP reloads, SIGTERM/SIGINT drain and exit.

use std::sync::Arc;

use anyhow::Context as _;
use arc_swap::ArcSwap;
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, error, info, warn};
use wharf_admin::AdminState;
use wharf_config::Config;
use wharf_control::ControlMetrics;

/// How long a starting Wharf waits for Docker's first listing before it serves
/// (a healthy Engine lists 10,000 services in well under a second).
const FIRST_LISTING_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

use crate::providers::{self, Reconciler};
use wharf_proxy::{AccessFormat, AccessLog};
use wharf_proxy::{Entrypoint, Forwarder, ListenerSettings, UpstreamSettings};
use wharf_tls::CertStore;

pub fn run(cfg: Config) -> anyhow::Result<()> {
    let cores = match cfg.runtime.worker_threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    // One core: one current-thread runtime serves everything (no cross-thread
    // wake-ups). More: a current-thread runtime per core serves connections
    // (`wharf_proxy::Cores`), and this one runs the control plane.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let cores = if cores > 1 {
        Some(wharf_proxy::Cores::start(cores).context("starting the per-core runtimes")?)
    } else {
        None
    };
    let result = runtime.block_on(serve(cfg, cores.as_ref()));
    if let Some(c) = cores {
        c.stop();
    }
    result
}

fn listener_settings(
    ep: &wharf_config::Entrypoint,
    global_slots: &Arc<tokio::sync::Semaphore>,
) -> ListenerSettings {
    ListenerSettings {
        name: ep.name.clone(),
        address: ep.address,
        tls: ep.tls,
        redirect_https: ep.redirect_https,
        proxy_protocol: ep.proxy_protocol.clone(),
        forwarded_trusted: ep.forwarded_trusted.clone(),
        http2: ep.http2,
        header_read_timeout: ep.header_read_timeout,
        max_header_size: ep.max_header_size,
        max_headers: ep.max_headers,
        open: Arc::default(),
        own_slots: (ep.max_connections > 0)
            .then(|| Arc::new(tokio::sync::Semaphore::new(ep.max_connections))),
        global_slots: Some(global_slots.clone()),
        idle_timeout: ep.idle_timeout,
        max_connection_age: ep.max_connection_age,
        client_timeout: ep.client_timeout,
        tunnel_timeout: ep.tunnel_timeout,
        h1_engine: h1_engine(),
        h2_engine: h2_engine(),
    }
}

/// `WHARF_HTTP1_ENGINE=hyper` sends HTTP/1.1 through hyper on both sides: no
/// engine for clients, no raw backend sockets (docs/config.md).
fn h1_engine() -> bool {
    std::env::var("WHARF_HTTP1_ENGINE").map_or(true, |v| v != "hyper")
}

/// `WHARF_HTTP2_ENGINE=hyper` serves HTTP/2 clients with hyper's server
/// instead of Wharf's own, to compare the two.
fn h2_engine() -> bool {
    std::env::var("WHARF_HTTP2_ENGINE").map_or(true, |v| v != "hyper")
}

/// File descriptors kept back from the derived connection cap: upstream
/// connections beyond one per client, the Docker and ACME clients, the
/// listeners, the access log, the certificate files.
const FD_RESERVE: u64 = 1024;

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (systemd and Docker
/// often start processes at 1024) and returns the connection cap: the
/// configured `[runtime] max_connections`, or, when that is 0, half of what
/// the raised limit leaves after [`FD_RESERVE`] (each client connection may
/// hold an upstream one), as HAProxy derives its maxconn from the limit.
fn connection_cap(configured: usize) -> usize {
    let (soft, hard) = match rlimit::Resource::NOFILE.get() {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read RLIMIT_NOFILE");
            (1024, 1024)
        }
    };
    let raised = match rlimit::Resource::NOFILE.set(hard, hard) {
        Ok(()) => hard,
        Err(e) => {
            tracing::warn!(error = %e, soft, hard, "cannot raise the RLIMIT_NOFILE soft limit");
            soft
        }
    };
    let derived = usize::try_from(raised.saturating_sub(FD_RESERVE) / 2)
        .unwrap_or(usize::MAX)
        .clamp(64, 1 << 24);
    let cap = if configured == 0 { derived } else { configured };
    tracing::info!(
        soft_was = soft,
        soft = raised,
        hard,
        max_connections = cap,
        derived = configured == 0,
        "file descriptor limit"
    );
    cap
}

/// `[[tls.certificates]]` as the store takes them.
fn cert_files(cfg: &Config) -> Vec<(std::path::PathBuf, std::path::PathBuf)> {
    cfg.tls
        .iter()
        .map(|c| (c.cert.clone(), c.key.clone()))
        .collect()
}

async fn serve(cfg: Config, cores: Option<&wharf_proxy::Cores>) -> anyhow::Result<()> {
    // Installed first, so a signal during start-up is handled rather than killing
    // the process with the default action.
    let mut hup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let registry = prometheus::Registry::new();
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .context("registering process metrics")?;
    let metrics = ControlMetrics::register(&registry).context("registering metrics")?;
    // The access log's file opens before anything is bound (exit 2 if it cannot).
    let access = access_log(&cfg.log);
    registry
        .register(Box::new(
            AccessLogDropped::new(access.clone()).context("access log metrics")?,
        ))
        .context("registering access log metrics")?;
    let cancel = CancellationToken::new();
    let problems = Arc::new(ArcSwap::from_pointee(Vec::new()));

    // The default certificate, then the files: a file that cannot be used stops
    // the start with its path in the message.
    let certs = Arc::new(CertStore::new().context("TLS certificate store")?);
    let bad = certs.replace_files(cert_files(&cfg));
    if !bad.is_empty() {
        let list: Vec<String> = bad
            .iter()
            .map(|e| format!("tls.certificates: {e}"))
            .collect();
        anyhow::bail!("{}", list.join("\n"));
    }
    let (acme, acme_error) = match crate::acme::start(&cfg, &certs, &registry, &cancel).await {
        Ok(a) => (a, None),
        Err(e) => (None, Some(e)),
    };

    let docker = providers::start_docker(&cfg, &cancel);
    let docker_on = docker.is_some();
    let dns = providers::start_dns(&cfg);
    let mut rec = Reconciler::new(
        cfg.clone(),
        docker,
        dns,
        problems.clone(),
        metrics.clone(),
        certs.clone(),
        acme.clone(),
    );
    if let Some(e) = acme_error {
        rec.acme_failed(e);
    }
    registry
        .register(Box::new(
            wharf_admin::CertCollector::new(certs.clone()).context("certificate metrics")?,
        ))
        .context("registering certificate metrics")?;
    // The published table's handle: the same for the process's life.
    let table = rec.control.table();
    registry
        .register(Box::new(
            wharf_admin::BackendCollector::new(table.clone()).context("backend metrics")?,
        ))
        .context("registering backend metrics")?;

    // Bind every entrypoint before serving any: a port that is taken stops the
    // start, and redirects need the port the first TLS entrypoint really got.
    let mut bound = Vec::new();
    let global_slots = Arc::new(tokio::sync::Semaphore::new(connection_cap(
        cfg.runtime.max_connections,
    )));
    for (index, ep) in cfg.entrypoints.iter().enumerate() {
        let listener = wharf_proxy::bind(ep.address).with_context(|| {
            format!("entrypoint `{}`: cannot listen on {}", ep.name, ep.address)
        })?;
        let tls = if ep.tls {
            Some(
                wharf_tls::server_config_with(certs.clone(), ep.http2, ep.strict_sni)
                    .context("TLS configuration")?,
            )
        } else {
            None
        };
        bound.push(Entrypoint {
            index,
            settings: Arc::new(listener_settings(ep, &global_slots)),
            listener,
            tls,
        });
    }
    // Routes (and with them ACME orders) only now: the CA may validate an HTTP-01 or
    // TLS-ALPN-01 challenge as soon as the order starts, and the sockets must exist
    // by then (connections queue until the listeners serve). Host owners are
    // restored first, so a squatter cannot win the first apply after a restart.
    rec.persist_owners(&cancel).await;
    // Docker's routes in the first table: a Wharf that starts while others serve
    // (its own update) must not answer 404 for them meanwhile.
    let waited = rec.first_docker_listing(FIRST_LISTING_WAIT).await;
    debug!(
        waited_ms = waited.as_millis() as u64,
        "first table: providers listed"
    );
    rec.apply();
    // Active health checks, from the first published table on; the reconciler
    // signals every later swap.
    let health = wharf_health::spawn(table.clone(), rec.swaps(), cancel.child_token());
    // Rate limits with `scope = "cluster"` divide by the live replicas, which
    // Docker counts (only while such a route exists).
    if docker_on {
        let routes = table.clone();
        wharf_docker::spawn_replicas(
            wharf_docker::endpoint_from_env(&cfg.docker.endpoint),
            cfg.docker
                .poll_interval
                .max(std::time::Duration::from_secs(1)),
            move || {
                routes
                    .load()
                    .routes()
                    .iter()
                    .any(|r| r.policy.ratelimit.as_ref().is_some_and(|rl| rl.cluster))
            },
            wharf_table::ratelimit::set_cluster_replicas,
            cancel.child_token(),
        );
    }
    let https_port = bound
        .iter()
        .filter(|e| e.tls.is_some())
        .find_map(|e| e.local_addr().ok())
        .map(|a| a.port());
    // HTTP-01 answers come from ACME when it is on.
    let http01 = crate::acme::http01_responder(acme.as_ref());
    let upstream = UpstreamSettings {
        connect_timeout: cfg.upstream.connect_timeout,
        response_timeout: cfg.upstream.response_timeout,
        idle_timeout: cfg.upstream.idle_timeout,
        max_idle_per_backend: cfg.upstream.max_idle_per_backend,
    };
    let tracker = TaskTracker::new();
    let fwd = Arc::new(
        Forwarder::new(
            table.clone(),
            &upstream,
            https_port,
            tracker.clone(),
            http01,
        )
        .with_access_log(access.as_ref().map(|a| a.sender()))
        .with_raw_backends(h1_engine()),
    );
    registry
        .register(Box::new(
            HandshakeFailures::new(fwd.clone()).context("TLS metrics")?,
        ))
        .context("registering TLS metrics")?;
    let open: Vec<(String, wharf_admin::OpenCounts)> = bound
        .iter()
        .map(|e| {
            let open = e.settings.open.clone();
            let read: wharf_admin::OpenCounts = Arc::new(move || open.snapshot());
            (e.settings.name.clone(), read)
        })
        .collect();
    registry
        .register(Box::new(
            wharf_admin::TrafficCollector::new(table.clone(), fwd.unrouted(), open)
                .context("request metrics")?,
        ))
        .context("registering request metrics")?;
    // Pooled connections to backends that drain or leave close at each swap, so
    // an application shutting down is not kept waiting by idle keep-alives.
    {
        let fwd = fwd.clone();
        let mut swaps = rec.swaps();
        let cancel = cancel.child_token();
        let mut retirement = wharf_proxy::Retirement::default();
        // The first table's backends, so one removed at the next swap is known.
        fwd.retire_backends(&mut retirement);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    changed = swaps.changed() => if changed.is_err() { return },
                }
                fwd.retire_backends(&mut retirement);
            }
        });
    }
    let mut listeners = Vec::new();
    for entry in bound {
        let local = entry.local_addr()?;
        info!(
            entrypoint = %entry.settings.name,
            address = %local,
            tls = entry.tls.is_some(),
            "entrypoint listening"
        );
        let Some(cores) = cores else {
            listeners.push(tokio::spawn(entry.serve(
                fwd.clone(),
                cancel.clone(),
                tracker.clone(),
            )));
            continue;
        };
        // Every core accepts from the one socket (its own registration of a
        // duplicate descriptor): a second Wharf still cannot bind the port,
        // and closing the last duplicate closes the socket once.
        let socket = entry.listener.into_std().context("per-core listener")?;
        for core in cores.handles() {
            let socket = socket.try_clone().context("per-core listener")?;
            let (settings, tls) = (entry.settings.clone(), entry.tls.clone());
            let (fwd, cancel, tracker) = (fwd.clone(), cancel.clone(), tracker.clone());
            let index = entry.index;
            listeners.push(core.spawn(async move {
                match tokio::net::TcpListener::from_std(socket) {
                    Ok(listener) => {
                        let ep = Entrypoint {
                            index,
                            settings,
                            listener,
                            tls,
                        };
                        ep.serve(fwd, cancel, tracker).await;
                    }
                    Err(e) => {
                        error!(entrypoint = %settings.name, error = %e, "a core cannot listen")
                    }
                }
            }));
        }
    }

    let admin_listener = wharf_proxy::bind(cfg.admin.address)
        .with_context(|| format!("admin: cannot listen on {}", cfg.admin.address))?;
    info!(address = %admin_listener.local_addr()?, "admin listening");
    let ready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin_state = AdminState {
        table: table.clone(),
        problems: problems.clone(),
        registry: registry.clone(),
        certificates: certs.clone(),
        ready: ready.clone(),
        settings: Arc::new(wharf_admin::AdminSettings {
            token: cfg.admin.token.as_ref().map(|t| t.expose().to_string()),
            hosts: cfg.admin.hosts.clone(),
            header_read_timeout: cfg.admin.header_read_timeout,
            idle_timeout: cfg.admin.idle_timeout,
            max_connections: cfg.admin.max_connections,
        }),
    };
    let admin = tokio::spawn(wharf_admin::serve(
        admin_listener,
        admin_state,
        cancel.clone(),
    ));

    drop(cfg);
    // The entrypoints are bound and serving, and the first table is published:
    // `/ping` answers 200 from now on.
    ready.store(true, std::sync::atomic::Ordering::Release);
    info!("wharf is ready");
    let grace = rec.config.runtime.accept_grace;
    let mut grace_until: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            _ = hup.recv() => {
                // Log rotation moved the access log away: write to a new file.
                if let Some(a) = &access {
                    a.reopen();
                }
                reload(&mut rec, &metrics)
            }
            _ = rec.changed() => rec.apply(),
            _ = term.recv() => {
                if lame_duck(&mut grace_until, grace, &ready, "SIGTERM") {
                    break;
                }
            }
            _ = int.recv() => {
                if lame_duck(&mut grace_until, grace, &ready, "SIGINT") {
                    break;
                }
            }
            _ = tokio::time::sleep_until(grace_until.unwrap_or_else(tokio::time::Instant::now)), if grace_until.is_some() => {
                info!("accept_grace over: draining");
                break;
            }
        }
    }

    if let Some(a) = &acme {
        a.shutdown();
    }
    cancel.cancel();
    tracker.close();
    for l in listeners {
        let _ = l.await;
    }
    let _ = admin.await;
    let _ = health.await;
    let timeout = rec.config.runtime.shutdown_timeout;
    if tokio::time::timeout(timeout, tracker.wait()).await.is_err() {
        warn!(
            open = tracker.len(),
            "shutdown_timeout ({timeout:?}) reached; closing the remaining connections"
        );
    } else {
        info!("drained; exiting");
    }
    if let Some(a) = &access {
        a.close(std::time::Duration::from_secs(2));
    }
    Ok(())
}

/// SIGHUP: re-read the file. A file that fails changes nothing; a certificate
/// file that fails keeps its previous certificate.
fn reload(rec: &mut Reconciler, metrics: &ControlMetrics) {
    let current = &mut rec.config;
    let Some(path) = current.source.clone() else {
        info!("SIGHUP: no config file to reload (running on built-in defaults)");
        return;
    };
    match wharf_config::load(&path, std::env::vars()) {
        Err(e) => {
            metrics
                .reloads
                .with_label_values(&["file", "failure"])
                .inc();
            error!("SIGHUP: reload rejected, the running configuration stays:\n{e}");
        }
        Ok(new) => {
            let restart_only = [
                (new.entrypoints != current.entrypoints, "entrypoints"),
                (new.admin != current.admin, "admin"),
                (new.runtime != current.runtime, "runtime"),
                (new.upstream != current.upstream, "upstream"),
                (new.log != current.log, "log"),
            ];
            for (changed, section) in restart_only {
                if changed {
                    warn!("SIGHUP: [{section}] changed; it takes effect at the next restart");
                }
            }
            // Listeners, admin, runtime and upstream settings stay as they run until
            // a restart; route entrypoint lists resolve against the running ones.
            let mut next = new;
            next.entrypoints = std::mem::take(&mut current.entrypoints);
            next.admin = current.admin.clone();
            next.runtime = current.runtime.clone();
            next.upstream = current.upstream.clone();
            next.log = current.log.clone();
            for r in &next.routes {
                for ep in r.entrypoints.iter().flatten() {
                    if next.entrypoint_index(ep).is_none() {
                        warn!(
                            "SIGHUP: route `{}` names entrypoint `{ep}`, which is not running \
                             until the next restart",
                            r.name
                        );
                    }
                }
            }
            for e in rec.certs.replace_files(cert_files(&next)) {
                error!("SIGHUP: tls.certificates: {e}; the previous certificate stays");
            }
            if next.acme != current.acme {
                warn!("SIGHUP: [acme] changed; it takes effect at the next restart");
                next.acme = current.acme.clone();
            }
            if next.dns != current.dns {
                warn!("SIGHUP: [dns] changed; it takes effect at the next restart");
                next.dns = current.dns.clone();
            }
            if next.docker != current.docker {
                warn!("SIGHUP: [docker] changed; it takes effect at the next restart");
                next.docker = current.docker.clone();
            }
            *current = next;
            rec.apply();
            metrics
                .reloads
                .with_label_values(&["file", "success"])
                .inc();
            info!(file = %path.display(), "SIGHUP: configuration reloaded");
        }
    }
}

/// `wharf_tls_handshake_failures_total`, read from the forwarder's counter at scrape
/// time (the data plane does not link prometheus).
struct HandshakeFailures {
    fwd: Arc<Forwarder>,
    desc: prometheus::core::Desc,
}

const HANDSHAKE_FAILURES: &str = "wharf_tls_handshake_failures_total";
const HANDSHAKE_FAILURES_HELP: &str = "TLS handshakes that failed or timed out.";

impl HandshakeFailures {
    fn new(fwd: Arc<Forwarder>) -> prometheus::Result<Self> {
        use prometheus::core::Describer as _;
        let desc = prometheus::Opts::new(HANDSHAKE_FAILURES, HANDSHAKE_FAILURES_HELP).describe()?;
        Ok(HandshakeFailures { fwd, desc })
    }
}

impl prometheus::core::Collector for HandshakeFailures {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        match prometheus::IntCounter::new(HANDSHAKE_FAILURES, HANDSHAKE_FAILURES_HELP) {
            Ok(c) => {
                c.inc_by(self.fwd.handshake_failures());
                c.collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// Starts the access log of `[log]`, or `None` when it is off. A file that
/// cannot be opened ends the process with exit code 2, as an invalid config
/// does, naming the file.
fn access_log(log: &wharf_config::LogConfig) -> Option<Arc<AccessLog>> {
    let format = match log.access {
        wharf_config::AccessLogFormat::Off => return None,
        wharf_config::AccessLogFormat::Combined => AccessFormat::Combined,
        wharf_config::AccessLogFormat::Json => AccessFormat::Json,
    };
    match AccessLog::start(format, log.access_file.as_deref()) {
        Ok(a) => Some(Arc::new(a)),
        Err(e) => {
            let what = match &log.access_file {
                Some(p) => format!("[log] access_file `{}`", p.display()),
                None => "[log] access log on standard output".to_string(),
            };
            error!("{what}: cannot open: {e}");
            eprintln!("wharf: {what}: cannot open: {e}");
            std::process::exit(2);
        }
    }
}

/// `wharf_accesslog_dropped_total`: access log lines lost (queue full, or a
/// failed write), read from the log's counter at scrape time; 0 when it is off.
struct AccessLogDropped {
    log: Option<Arc<AccessLog>>,
    desc: prometheus::core::Desc,
}

const ACCESSLOG_DROPPED: &str = "wharf_accesslog_dropped_total";
const ACCESSLOG_DROPPED_HELP: &str =
    "Access log lines dropped: the queue to the writer was full, or a write failed.";

impl AccessLogDropped {
    fn new(log: Option<Arc<AccessLog>>) -> prometheus::Result<Self> {
        use prometheus::core::Describer as _;
        let desc = prometheus::Opts::new(ACCESSLOG_DROPPED, ACCESSLOG_DROPPED_HELP).describe()?;
        Ok(AccessLogDropped { log, desc })
    }
}

impl prometheus::core::Collector for AccessLogDropped {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        match prometheus::IntCounter::new(ACCESSLOG_DROPPED, ACCESSLOG_DROPPED_HELP) {
            Ok(c) => {
                c.inc_by(self.log.as_ref().map_or(0, |l| l.dropped()));
                c.collect()
            }
            Err(_) => Vec::new(),
        }
    }
}

/// A stop signal. Without `accept_grace` (or at a second signal) the drain
/// starts now: returns true. Otherwise Wharf goes on serving, new connections
/// too, with `/ping` answering 503, so that an L4 balancer's health check takes
/// this replica out before its listeners close (a connection queued on a
/// closing listener is reset); the drain starts when the grace is over.
fn lame_duck(
    until: &mut Option<tokio::time::Instant>,
    grace: std::time::Duration,
    ready: &std::sync::atomic::AtomicBool,
    signal: &str,
) -> bool {
    if grace.is_zero() || until.is_some() {
        info!("{signal}: draining");
        return true;
    }
    ready.store(false, std::sync::atomic::Ordering::Release);
    *until = Some(tokio::time::Instant::now() + grace);
    info!(
        accept_grace = ?grace,
        "{signal}: still accepting for accept_grace, /ping answers 503; draining after it (another signal: at once)"
    );
    false
}
