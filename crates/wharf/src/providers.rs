//! Providers and the reconciler: starts the Docker (and DNS) providers the config
//! asks for, and recompiles the table whenever the file, a Docker snapshot or a
//! DNS answer changes. Logging is by change: a problem is logged once when it
//! appears, a swap as one diff line.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use wharf_acme::AcmeManager;
use wharf_admin::ConfigProblem;
use wharf_config::{Config, DockerMode};
use wharf_control::{Claims, Control, ControlMetrics, Inputs, Problem};
use wharf_dns::{DnsProvider, DnsSettings};
use wharf_docker::{DockerProvider, DockerSettings, ProviderState, Snapshot};
use wharf_tls::{CertSource, CertStore};

const PROVIDERS: [&str; 4] = ["file", "docker", "dns", "acme"];

pub struct Reconciler {
    pub control: Control,
    pub config: Config,
    docker: Option<DockerProvider>,
    docker_snapshot: Option<Arc<Snapshot>>,
    /// Docker was unreachable at the last apply.
    docker_down: bool,
    dns: BTreeMap<String, Vec<IpAddr>>,
    resolver: Option<(DnsProvider, tokio::sync::watch::Receiver<u64>)>,
    dns_names: BTreeSet<String>,
    problems: Arc<ArcSwap<Vec<ConfigProblem>>>,
    metrics: ControlMetrics,
    pub certs: Arc<CertStore>,
    acme: Option<AcmeManager>,
    /// The certificates (one per route's host list) last asked of ACME, and the
    /// problems ACME reported about them.
    acme_names: Vec<Vec<String>>,
    acme_problems: Vec<Problem>,
    /// Label names past `[acme] max_names`: how many, and the problem saying so.
    capped_names: usize,
    acme_cap_problem: Option<Problem>,
    /// Messages logged already, so each is logged once while it lasts.
    logged: HashSet<String>,
    /// Bumped after every table swap (the health checker reconciles on it).
    swaps: tokio::sync::watch::Sender<u64>,
    /// The ownership record to write (JSON), for the task that persists it; and
    /// what was last handed to it.
    owners_tx: Option<tokio::sync::watch::Sender<String>>,
    owners_sent: Option<Claims>,
}

/// Starts the Docker provider unless the config turns it off. In `auto` mode a
/// missing unix socket means "no Docker here", not an error.
pub fn start_docker(cfg: &Config, cancel: &CancellationToken) -> Option<DockerProvider> {
    let mode = match cfg.docker.mode {
        DockerMode::Off => return None,
        DockerMode::Auto => wharf_docker::Mode::Auto,
        DockerMode::Swarm => wharf_docker::Mode::Swarm,
        DockerMode::Containers => wharf_docker::Mode::Containers,
    };
    let endpoint = wharf_docker::endpoint_from_env(&cfg.docker.endpoint);
    if cfg.docker.mode == DockerMode::Auto {
        if let Some(path) = endpoint.strip_prefix("unix://") {
            if !std::path::Path::new(path).exists() {
                info!(endpoint = %endpoint, "docker: no socket; the Docker provider is off");
                return None;
            }
        }
    }
    Some(wharf_docker::spawn(
        DockerSettings {
            endpoint,
            mode,
            poll_interval: cfg.docker.poll_interval,
            debounce: Duration::from_millis(20),
            include_unlabelled: cfg.docker.exposed_by_default,
        },
        cancel.child_token(),
    ))
}

/// The DNS provider for `dns:` upstreams and dnsrr services. It sends nothing
/// until a name is watched.
pub fn start_dns(cfg: &Config) -> Option<DnsProvider> {
    let settings = DnsSettings {
        nameservers: cfg.dns.nameservers.clone(),
        refresh: cfg.dns.refresh,
        hold_valid: cfg.dns.hold_valid,
        // Nudges from Docker (a dnsrr service's tasks changed) wait for this floor;
        // the global query budget still bounds the rate.
        min_refresh: Duration::from_millis(250).min(cfg.dns.refresh),
        ..DnsSettings::default()
    };
    match DnsProvider::new(settings) {
        Ok(p) => Some(p),
        Err(e) => {
            warn!("dns: the DNS provider cannot start ({e}); `dns:` upstreams get no backends");
            None
        }
    }
}

impl Reconciler {
    pub fn new(
        config: Config,
        docker: Option<DockerProvider>,
        dns: Option<DnsProvider>,
        problems: Arc<ArcSwap<Vec<ConfigProblem>>>,
        metrics: ControlMetrics,
        certs: Arc<CertStore>,
        acme: Option<AcmeManager>,
    ) -> Self {
        // Every reload series of a running provider exists from the start at 0,
        // so `increase()` sees a provider's first reload or first failure.
        let mut running = vec!["file"];
        if docker.is_some() {
            running.push("docker");
        }
        if dns.is_some() {
            running.push("dns");
        }
        for provider in running {
            for result in ["success", "failure"] {
                metrics
                    .reloads
                    .with_label_values(&[provider, result])
                    .inc_by(0);
            }
        }
        Reconciler {
            control: Control::new(),
            config,
            docker,
            docker_snapshot: None,
            docker_down: false,
            dns: BTreeMap::new(),
            resolver: dns.map(|p| {
                let rx = p.subscribe();
                (p, rx)
            }),
            dns_names: BTreeSet::new(),
            problems,
            metrics,
            certs,
            acme,
            acme_names: Vec::new(),
            acme_problems: Vec::new(),
            capped_names: 0,
            acme_cap_problem: None,
            logged: HashSet::new(),
            swaps: tokio::sync::watch::Sender::new(0),
            owners_tx: None,
            owners_sent: None,
        }
    }

    /// Restores the host ownership record from the certificate storage and keeps
    /// it there (written atomically by the store) whenever it changes, so owners
    /// survive restarts and a redeployed owner keeps its hosts. Only with Docker:
    /// file routes need no record. A record that cannot be read is logged and
    /// started afresh (first claims are then decided by creation time again).
    pub async fn persist_owners(&mut self, cancel: &CancellationToken) {
        if self.docker.is_none() {
            return;
        }
        let store = match wharf_acme::store::open(&self.config.acme.storage) {
            Ok(s) => s,
            Err(e) => {
                warn!("host ownership: storage unavailable, claims are not remembered across restarts: {e}");
                return;
            }
        };
        match store.load_owners().await {
            Ok(Some(text)) => match Claims::from_json(&text) {
                Ok(c) => {
                    info!(hosts = c.hosts.len(), "host ownership: record restored");
                    self.owners_sent = Some(c.clone());
                    self.control.load_claims(c);
                }
                Err(e) => warn!("host ownership: ignoring the stored record: {e}"),
            },
            Ok(None) => {}
            Err(e) => warn!("host ownership: cannot read the stored record: {e}"),
        }
        let (tx, mut rx) = tokio::sync::watch::channel(String::new());
        let cancel = cancel.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = rx.changed() => if r.is_err() { return },
                }
                let json = rx.borrow_and_update().clone();
                if let Err(e) = store.save_owners(&json).await {
                    warn!("host ownership: the record was not stored: {e}");
                }
            }
        });
        self.owners_tx = Some(tx);
    }

    fn send_owners(&mut self) {
        let Some(tx) = &self.owners_tx else {
            return;
        };
        let claims = self.control.claims();
        if self.owners_sent.as_ref() != Some(&claims) {
            tx.send_replace(claims.to_json());
            self.owners_sent = Some(claims);
        }
    }

    /// Changes once after every table swap.
    pub fn swaps(&self) -> tokio::sync::watch::Receiver<u64> {
        self.swaps.subscribe()
    }

    /// Waits, at most `within`, for the Docker provider's first listing, so that a
    /// Wharf that starts (a restart, its own rolling update) does not answer 404
    /// for every labelled service until Docker has been asked. A first attempt
    /// that fails (a socket proxy starting beside Wharf) is retried within a
    /// second, so the wait goes on through failures until the deadline.
    /// Connections meanwhile wait in the listeners' backlog. Returns how long it
    /// waited.
    pub async fn first_docker_listing(&mut self, within: Duration) -> Duration {
        let started = Instant::now();
        let Some(d) = self.docker.as_mut() else {
            return started.elapsed();
        };
        let mut snaps = d.snapshots.clone();
        let listed = snaps.wait_for(Option::is_some);
        if tokio::time::timeout(within, listed).await.is_err() {
            warn!(
                waited = ?within,
                "docker: no listing yet; serving without Docker's routes until it comes"
            );
        }
        started.elapsed()
    }

    /// Waits until some provider has news. Never returns when none is running.
    pub async fn changed(&mut self) {
        let docker = async {
            match self.docker.as_mut() {
                Some(d) => tokio::select! {
                    r = d.snapshots.changed() => r.is_ok(),
                    r = d.state.changed() => r.is_ok(),
                },
                None => false,
            }
        };
        let dns = async {
            match self.resolver.as_mut() {
                Some((_, rx)) => rx.changed().await.is_ok(),
                None => false,
            }
        };
        // A provider that has stopped never wakes the loop again.
        tokio::select! {
            true = docker => {}
            true = dns => {}
            else => std::future::pending().await,
        }
    }

    /// Recompiles from every input and swaps when the result differs.
    pub fn apply(&mut self) {
        // `wharf_config_reloads_total{provider}`: a new Docker snapshot or new
        // DNS answers are a reload of that provider (the file's are counted by
        // SIGHUP in run.rs).
        let mut reloaded: Vec<&'static str> = Vec::new();
        if let Some(d) = self.docker.as_mut() {
            let snap = d.snapshots.borrow_and_update().clone();
            if snap != self.docker_snapshot {
                reloaded.push("docker");
                // A dnsrr service's tasks changed: its DNS answer has too.
                if let (Some((dns, _)), Some(s)) = (&self.resolver, &snap) {
                    let before: std::collections::HashMap<&str, &wharf_docker::Workload> = self
                        .docker_snapshot
                        .iter()
                        .flat_map(|p| p.workloads.iter())
                        .map(|w| (w.id.as_str(), w))
                        .collect();
                    let names: Vec<String> = s
                        .workloads
                        .iter()
                        .filter(|w| w.dnsrr)
                        .filter(|w| {
                            before
                                .get(w.id.as_str())
                                .is_none_or(|b| b.endpoints != w.endpoints)
                        })
                        .map(|w| format!("tasks.{}", w.name))
                        .collect();
                    dns.nudge(names.iter().map(String::as_str));
                }
                self.docker_snapshot = snap;
            }
        }
        if let Some((p, rx)) = self.resolver.as_mut() {
            rx.borrow_and_update();
            let dns: BTreeMap<String, Vec<std::net::IpAddr>> = p
                .answers()
                .into_iter()
                .map(|(name, a)| (name, a.addrs))
                .collect();
            if dns != self.dns {
                reloaded.push("dns");
                self.dns = dns;
            }
        }
        let started = Instant::now();
        let report = self.control.apply_inputs(&Inputs {
            config: &self.config,
            docker: self.docker_snapshot.as_deref(),
            dns: &self.dns,
        });
        if report.swapped {
            self.swaps.send_modify(|n| *n = n.wrapping_add(1));
            let diff = report.diff_line();
            info!(
                routes = report.routes,
                elapsed_us = started.elapsed().as_micros() as u64,
                "routing table swapped{}{}",
                if diff.is_empty() { "" } else { "; " },
                diff
            );
        }

        if let Some((p, _)) = &self.resolver {
            if report.dns_names != self.dns_names {
                self.dns_names = report.dns_names.clone();
                p.set_names(self.dns_names.clone());
            }
        }
        self.send_owners();
        self.certificates();
        let mut problems = report.problems;
        problems.extend(self.acme_problems.iter().cloned());
        problems.extend(self.acme_cap_problem.iter().cloned());
        self.metrics
            .acme_names_capped
            .set(i64::try_from(self.capped_names).unwrap_or(i64::MAX));
        for provider in reloaded {
            self.metrics
                .reloads
                .with_label_values(&[provider, "success"])
                .inc();
        }
        if let Some(d) = self.docker.as_mut() {
            let state = d.state.borrow_and_update();
            let unreachable = matches!(&*state, ProviderState::Unreachable { .. });
            if unreachable && !self.docker_down {
                // A failed reload: the Engine stopped answering (counted once
                // per outage).
                self.metrics
                    .reloads
                    .with_label_values(&["docker", "failure"])
                    .inc();
            }
            self.docker_down = unreachable;
            self.metrics
                .degraded
                .with_label_values(&["docker"])
                .set(i64::from(unreachable));
            if let ProviderState::Unreachable { error, since } = &*state {
                problems.push(Problem {
                    source: "docker",
                    service: None,
                    label: None,
                    message: format!(
                        "Docker is unreachable since {} ({error}); serving the last known routes",
                        humantime::format_rfc3339_seconds(*since)
                    ),
                    error: true,
                });
            }
        }

        // Log what is new; forget what is gone, so it is logged again if it returns.
        let mut now = HashSet::new();
        for w in &self.config.warnings {
            now.insert(w.clone());
        }
        for p in &problems {
            now.insert(p.to_string());
        }
        for n in &report.not_enforced {
            now.insert(n.clone());
        }
        for m in &now {
            if !self.logged.contains(m) {
                warn!("{m}");
            }
        }
        self.logged = now;

        for provider in PROVIDERS {
            let n = problems
                .iter()
                .filter(|p| p.error && p.source == provider)
                .count();
            self.metrics
                .errors
                .with_label_values(&[provider])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        self.metrics
            .routes
            .set(i64::try_from(report.routes).unwrap_or(i64::MAX));
        let list: Vec<ConfigProblem> = problems
            .into_iter()
            .map(|p| ConfigProblem {
                source: p.source.into(),
                service: p.service,
                label: p.label,
                message: p.message,
            })
            .collect();
        self.problems.store(Arc::new(list));
    }

    /// ACME could not start: shown in `/api/errors` for as long as it runs.
    pub fn acme_failed(&mut self, message: String) {
        self.acme_problems = vec![Problem {
            source: "acme",
            service: None,
            label: None,
            message,
            error: true,
        }];
    }

    /// Every host of a route with `tls = acme` gets a certificate: a self-signed
    /// one at once, then ACME's (unless a `[[tls.certificates]]` file covers it).
    /// Only hosts the table serves: a label host refused or lost in a conflict
    /// was dropped from its route before compiling (review M8). Names from
    /// labels are capped at `[acme] max_names` (file routes do not count); the
    /// names past it, in route order (oldest workloads first), get none.
    fn certificates(&mut self) {
        let table = self.control.table().load();
        let max = self.config.acme.max_names;
        let mut lists: Vec<(bool, Vec<String>)> = Vec::new();
        for r in table.routes().iter().filter(|r| r.policy.tls) {
            let from_labels = &*r.source == "docker";
            let names: Vec<String> = r
                .hosts
                .iter()
                .filter(|h| h.as_str() != "*")
                .filter(|h| {
                    !self
                        .certs
                        .lookup(h)
                        .is_some_and(|c| matches!(c.source, CertSource::File { .. }))
                })
                .cloned()
                .collect();
            lists.push((from_labels, names));
        }
        let (wanted, capped) = cap_label_names(lists, max);
        self.capped_names = capped.len();
        let capped_problem = (!capped.is_empty()).then(|| Problem {
            source: "acme",
            service: None,
            label: Some("acme.max_names".into()),
            message: format!(
                "{} host name(s) from labels are past [acme] max_names = {max} and get no \
                 certificate (the default one is served): {}{}",
                capped.len(),
                capped
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", "),
                if capped.len() > 5 { ", ..." } else { "" }
            ),
            error: true,
        });
        self.acme_cap_problem = capped_problem;
        if wanted == self.acme_names {
            return;
        }
        let flat: Vec<String> = wanted.iter().flatten().cloned().collect();
        // Placeholders of hosts no route wants any more go (a set: at 10,000 names
        // a list would cost 10^8 comparisons per change).
        let wanted_set: HashSet<&str> = flat.iter().map(String::as_str).collect();
        self.certs.remove_where(|c| {
            c.source == CertSource::SelfSigned
                && !c.names.iter().any(|n| wanted_set.contains(n.as_str()))
        });
        if let Err(e) = self.certs.ensure_self_signed(&flat) {
            warn!("self-signed certificates: {e}");
        }
        if let Some(acme) = &self.acme {
            self.acme_problems = acme
                .set_names(wanted.clone())
                .into_iter()
                .map(|e| Problem {
                    source: "acme",
                    service: None,
                    label: None,
                    message: e.to_string(),
                    error: true,
                })
                .collect();
        }
        self.acme_names = wanted;
    }
}

/// The certificates to order, one per route's name list (`(from labels, names)`
/// in table order), with names from labels past `max` left out; and those names.
/// A name a file route or an earlier label route already counted costs nothing.
fn cap_label_names(lists: Vec<(bool, Vec<String>)>, max: usize) -> (Vec<Vec<String>>, Vec<String>) {
    let mut wanted: Vec<Vec<String>> = Vec::new();
    let mut label_names: HashSet<String> = HashSet::new();
    let mut capped: Vec<String> = Vec::new();
    for (from_labels, mut names) in lists {
        if from_labels {
            names.retain(|n| {
                if label_names.contains(n) || label_names.len() < max {
                    label_names.insert(n.clone());
                    true
                } else {
                    if !capped.contains(n) {
                        capped.push(n.clone());
                    }
                    false
                }
            });
        }
        if !names.is_empty() && !wanted.contains(&names) {
            wanted.push(names);
        }
    }
    (wanted, capped)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn label_names_are_capped_and_file_names_are_not() {
        let (wanted, capped) = cap_label_names(
            vec![
                (false, names(&["f1.test", "f2.test", "f3.test"])),
                (true, names(&["a.test", "b.test"])),
                (true, names(&["a.test"])),
                (true, names(&["c.test", "d.test"])),
                (false, names(&["f4.test"])),
            ],
            3,
        );
        assert_eq!(
            wanted,
            vec![
                names(&["f1.test", "f2.test", "f3.test"]),
                names(&["a.test", "b.test"]),
                names(&["a.test"]),
                names(&["c.test"]),
                names(&["f4.test"]),
            ]
        );
        assert_eq!(capped, names(&["d.test"]));
        let (_, none) = cap_label_names(vec![(true, names(&["a.test"]))], 0);
        assert_eq!(none, names(&["a.test"]));
    }
}
