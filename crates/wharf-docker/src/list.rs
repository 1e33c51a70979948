//! The provider's loop: connect, list, follow events, poll tasks, reconnect.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use bollard::models::{
    ContainerSummary, ContainerSummaryHealthStatusEnum, EndpointSpecModeEnum, EventMessage,
    EventMessageTypeEnum, LocalNodeState, Service, Task, TaskState,
};
use bollard::query_parameters::{
    EventsOptions, InspectNetworkOptions, ListContainersOptions, ListServicesOptions,
    ListTasksOptions,
};
use bollard::Docker;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::{client, DockerSettings, Endpoint, Kind, Mode, ProviderState, Snapshot, Workload};

/// While the API does not answer at all (connect, info or the listing fails),
/// it is asked again after 0.5 to 1 s: a refused connection costs nothing, and
/// the routes catch up within about a second of the API returning.
const DOWN_RETRY: Duration = Duration::from_secs(1);
/// Sessions that fail soon after their listing (a socket proxy refusing
/// `/events`) space out full listings: at least this long apart at first,
/// doubling up to [`BACKOFF_MAX`], ...
const BACKOFF_MIN: Duration = Duration::from_millis(250);
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// ... until a session stays up this long after its listing.
const HEALTHY_SESSION: Duration = Duration::from_secs(30);
/// Without swarm there is nothing to poll, but a periodic full listing still
/// repairs anything an event stream could have missed.
const RESYNC: Duration = Duration::from_secs(30);
/// How long, after an event, swarm tasks are polled at [`FAST_POLL`].
const FAST_WINDOW: Duration = Duration::from_secs(5);
const FAST_POLL: Duration = Duration::from_millis(100);
/// A stream of events never postpones a listing by more than this many debounces.
const DEBOUNCE_CAP: u32 = 10;

/// Label prefixes that make a workload interesting to Wharf.
fn interesting(labels: &HashMap<String, String>) -> bool {
    labels.keys().any(|k| {
        let k = k.to_ascii_lowercase();
        k.starts_with("wharf.") || k.starts_with("traefik.")
    })
}

pub(crate) async fn run(
    settings: DockerSettings,
    snap_tx: watch::Sender<Option<Arc<Snapshot>>>,
    state_tx: watch::Sender<ProviderState>,
    cancel: CancellationToken,
) {
    let mut retry = Retry::new();
    loop {
        let mut listed = None;
        let result = session(&settings, &snap_tx, &state_tx, &cancel, &mut listed).await;
        if cancel.is_cancelled() {
            return;
        }
        let error = match result {
            Ok(()) => "the event stream ended".to_string(),
            Err(e) => e,
        };
        let (changed, first) = mark_unreachable(&state_tx, &error);
        let at = retry.next(listed, Instant::now(), fastrand::f64());
        let retry_in = at.saturating_duration_since(Instant::now());
        if first {
            warn!(
                error = %error,
                retry_in = ?retry_in,
                "docker: unreachable; serving the last known routes and reconnecting"
            );
        } else if changed {
            // The reconciler logs the new reason as a problem already.
            info!(error = %error, retry_in = ?retry_in, "docker: still unreachable");
        } else {
            debug!(error = %error, retry_in = ?retry_in, "docker: still unreachable");
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(at) => {}
        }
    }
}

/// Records an outage: `since` is kept from its start, the error is the latest
/// (watchers are told only when it changes, so a retry every second wakes no
/// one). Returns (state changed, the outage just began).
fn mark_unreachable(state_tx: &watch::Sender<ProviderState>, error: &str) -> (bool, bool) {
    let mut first = false;
    let changed = state_tx.send_if_modified(|s| match s {
        ProviderState::Unreachable { error: e, .. } if e == error => false,
        ProviderState::Unreachable { error: e, .. } => {
            *e = error.to_string();
            true
        }
        _ => {
            first = true;
            *s = ProviderState::Unreachable {
                error: error.to_string(),
                since: std::time::SystemTime::now(),
            };
            true
        }
    });
    (changed, first)
}

/// The reconnect schedule, apart from I/O so that it is tested with paused time.
///
/// Two cases, told apart by whether the session got as far as its full listing:
/// - it did not (the socket is gone, a proxy is restarting, the daemon hangs):
///   try again after 0.5 to 1 s ([`DOWN_RETRY`], jittered), however long the
///   outage lasts, so that the routes follow within about a second of the API
///   returning;
/// - it did, and then failed (the event stream was refused or cut), or the
///   Engine answered but a listing failed (a proxy refusing a section): the next
///   listing waits until [`BACKOFF_MIN`] .. [`BACKOFF_MAX`] (jittered, doubling
///   each time) after this one, so an endpoint that lists but refuses `/events`
///   is not re-listed several times a second. A session that stayed up for
///   [`HEALTHY_SESSION`] starts the backoff again from its minimum; one that
///   lasted longer than the backoff waits for nothing.
///
/// Each wait is jittered (half to all of it), so that several replicas do not
/// reconnect in lockstep.
#[derive(Debug)]
struct Retry {
    backoff: Duration,
}

impl Retry {
    fn new() -> Self {
        Retry {
            backoff: BACKOFF_MIN,
        }
    }

    /// When to start the next session. `listed` is when the session that just
    /// ended published its listing (None: it never got that far); `jitter` is
    /// uniform in [0, 1).
    fn next(&mut self, listed: Option<Instant>, now: Instant, jitter: f64) -> Instant {
        let spread = |d: Duration| d.mul_f64(0.5 + jitter.clamp(0.0, 1.0) * 0.5);
        let Some(listed) = listed else {
            return now + spread(DOWN_RETRY);
        };
        if now.saturating_duration_since(listed) >= HEALTHY_SESSION {
            self.backoff = BACKOFF_MIN;
        }
        let at = (listed + spread(self.backoff)).max(now);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
        at
    }
}

/// One connection's life. Returns Ok only when cancelled or the stream ended.
async fn session(
    settings: &DockerSettings,
    snap_tx: &watch::Sender<Option<Arc<Snapshot>>>,
    state_tx: &watch::Sender<ProviderState>,
    cancel: &CancellationToken,
    listed: &mut Option<Instant>,
) -> Result<(), String> {
    let docker = client::connect(&settings.endpoint).await?;
    let info = docker.info().await.map_err(|e| format!("info: {e}"))?;
    let manager = info.swarm.as_ref().is_some_and(|s| {
        s.local_node_state == Some(LocalNodeState::ACTIVE) && s.control_available == Some(true)
    });
    let (services, containers) = match settings.mode {
        Mode::Auto => (manager, true),
        Mode::Swarm => {
            if !manager {
                return Err("docker.mode = \"swarm\" but this node is not a swarm manager".into());
            }
            (true, false)
        }
        Mode::Containers => (false, true),
    };

    // Subscribe before listing, so that nothing between the two is missed.
    let mut types = vec!["container".to_string(), "network".to_string()];
    if services {
        types.push("service".to_string());
    }
    let mut filters = HashMap::new();
    filters.insert("type".to_string(), types);
    // The stream's request is only sent when it is first polled, after the
    // listing: ask the daemon to replay from just before it, by its own clock.
    let since = daemon_epoch(info.system_time.as_deref())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
        })
        .saturating_sub(Duration::from_secs(1));
    let mut events = docker.events(Some(EventsOptions {
        since: Some(since.as_secs().to_string()),
        filters: Some(filters),
        ..Default::default()
    }));

    let mut lister = Lister {
        docker: &docker,
        services,
        containers,
        include_unlabelled: settings.include_unlabelled,
        images: HashMap::new(),
        tasks_digest: Vec::new(),
        node_id: info
            .swarm
            .as_ref()
            .and_then(|s| s.node_id.clone())
            .filter(|id| !id.is_empty()),
    };
    let started = Instant::now();
    let listing = lister.full().await;
    // Listed, or the Engine answered `/info` but a listing failed (a socket
    // proxy that refuses `/services` with 403, say): either way the next
    // session backs off, not the every-second retry of an Engine that does
    // not answer at all (`Retry`).
    *listed = Some(Instant::now());
    let snap = listing?;
    let count = snap.workloads.len();
    // The snapshot first, then the state: a watcher woken by either sees the
    // new listing with the provider connected, and an unchanged listing after
    // an outage publishes nothing (no recompilation, no table swap).
    publish(snap_tx, snap);
    let was = state_tx.send_replace(ProviderState::Connected { swarm: services });
    let down_ms = match was {
        ProviderState::Unreachable { since, .. } => since
            .elapsed()
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
        _ => 0,
    };
    info!(
        endpoint = %settings.endpoint,
        swarm = services,
        workloads = count,
        elapsed_ms = started.elapsed().as_millis() as u64,
        down_ms,
        "docker: connected and listed"
    );

    let normal = if services {
        settings.poll_interval
    } else {
        RESYNC
    };
    let mut next_poll = Instant::now() + normal;
    let mut last_full = Instant::now();
    // After an event, swarm tasks move through their states within seconds
    // (pending, starting, running) and the manager reports them without a local
    // event: poll faster for a while, then back to the normal pace.
    let mut fast_until = Instant::now();
    let far = Instant::now() + Duration::from_secs(86400 * 365);
    let mut dirty: Option<(Instant, Instant)> = None; // (deadline, cap)
    loop {
        let deadline = dirty.map_or(far, |(d, cap)| d.min(cap));
        tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            ev = events.next() => match ev {
                None => return Ok(()),
                Some(Err(e)) => return Err(format!("events: {e}")),
                Some(Ok(ev)) => {
                    if relevant(&ev) {
                        let now = Instant::now();
                        let cap = dirty.map_or(now + settings.debounce * DEBOUNCE_CAP, |(_, c)| c);
                        dirty = Some((now + settings.debounce, cap));
                        if services {
                            fast_until = now + FAST_WINDOW;
                            next_poll = next_poll.min(now + FAST_POLL);
                        }
                    }
                }
            },
            _ = tokio::time::sleep_until(deadline), if dirty.is_some() => {
                dirty = None;
                publish(snap_tx, lister.full().await?);
                last_full = Instant::now();
            }
            _ = tokio::time::sleep_until(next_poll) => {
                // A full listing every RESYNC repairs anything missed (a label-only
                // service update restarts no task); in between, tasks only.
                let due = !services || last_full.elapsed() >= RESYNC;
                if due || lister.tasks_changed().await? {
                    publish(snap_tx, lister.full().await?);
                    last_full = Instant::now();
                }
                let now = Instant::now();
                next_poll = now + if now < fast_until { FAST_POLL } else { normal };
            }
        }
    }
}

/// Events that can change routes. Health-check execs (`exec_*`) and the like are
/// frequent and change nothing.
fn relevant(ev: &EventMessage) -> bool {
    let action = ev.action.as_deref().unwrap_or_default();
    match ev.typ {
        Some(EventMessageTypeEnum::CONTAINER) => {
            let base = action.split(':').next().unwrap_or_default();
            matches!(
                base,
                "start"
                    | "die"
                    | "stop"
                    | "kill"
                    | "destroy"
                    | "pause"
                    | "unpause"
                    | "rename"
                    | "update"
                    | "health_status"
            )
        }
        Some(EventMessageTypeEnum::SERVICE) => true,
        Some(EventMessageTypeEnum::NETWORK) => matches!(action, "connect" | "disconnect"),
        _ => false,
    }
}

/// Publishes only a snapshot that differs from the current one, so an unchanged
/// listing causes no recompilation downstream.
fn publish(tx: &watch::Sender<Option<Arc<Snapshot>>>, snap: Snapshot) {
    tx.send_if_modified(|cur| {
        if cur.as_deref() == Some(&snap) {
            return false;
        }
        *cur = Some(Arc::new(snap));
        true
    });
}

struct Lister<'a> {
    docker: &'a Docker,
    services: bool,
    containers: bool,
    include_unlabelled: bool,
    /// Exposed ports per image reference (images are immutable once resolved).
    images: HashMap<String, Vec<u16>>,
    /// (task, state, desired state) of the last task listing.
    tasks_digest: Vec<(String, String, String)>,
    /// This node's swarm ID (its tasks' containers are in the local listing).
    node_id: Option<String>,
}

impl Lister<'_> {
    async fn full(&mut self) -> Result<Snapshot, String> {
        // Tasks before containers: a task the manager still calls running whose
        // container on this node is no longer in the (later) container list has
        // exited (see `services`); the other order could drop a task that
        // started between the two listings.
        let tasks = if self.services {
            Some(self.list_tasks().await?)
        } else {
            None
        };
        let containers = self
            .docker
            .list_containers(Some(ListContainersOptions {
                all: false,
                ..Default::default()
            }))
            .await
            .map_err(|e| format!("listing containers: {e}"))?;
        let mut workloads = Vec::new();
        if let Some(tasks) = tasks {
            workloads.extend(self.services(&containers, tasks).await?);
        }
        if self.containers {
            workloads.extend(group_compose(
                containers
                    .iter()
                    .filter_map(|c| container_workload(c, self.include_unlabelled))
                    .collect(),
            ));
        }
        workloads.sort_by(|a, b| (&a.created, a.kind, &a.name).cmp(&(&b.created, b.kind, &b.name)));
        Ok(Snapshot { workloads })
    }

    async fn list_tasks(&self) -> Result<Vec<Task>, String> {
        self.docker
            .list_tasks(None::<ListTasksOptions>)
            .await
            .map_err(|e| format!("listing tasks: {e}"))
    }

    /// One API call: did any task start, stop or change its desired state?
    async fn tasks_changed(&mut self) -> Result<bool, String> {
        let digest = tasks_digest(&self.list_tasks().await?);
        Ok(digest != self.tasks_digest)
    }

    async fn services(
        &mut self,
        containers: &[ContainerSummary],
        tasks: Vec<Task>,
    ) -> Result<Vec<Workload>, String> {
        let services = self
            .docker
            .list_services(None::<ListServicesOptions>)
            .await
            .map_err(|e| format!("listing services: {e}"))?;
        self.tasks_digest = tasks_digest(&tasks);
        // Tasks of this node whose container runs (listed after the tasks).
        let running_here: BTreeSet<&str> = containers
            .iter()
            .filter_map(|c| c.labels.as_ref()?.get("com.docker.swarm.task.id"))
            .map(String::as_str)
            .collect();

        // Health is known only for containers on this node.
        let unhealthy: BTreeSet<&str> = containers
            .iter()
            .filter(|c| container_unhealthy(c))
            .filter_map(|c| c.id.as_deref())
            .collect();

        let services: Vec<&Service> = services
            .iter()
            .filter(|s| {
                self.include_unlabelled
                    || s.spec
                        .as_ref()
                        .and_then(|sp| sp.labels.as_ref())
                        .is_some_and(interesting)
            })
            .collect();

        // Task addresses per network, from each network's view of its tasks: this
        // covers tasks on every node, which the local container list does not.
        let mut networks = BTreeSet::new();
        for s in &services {
            for n in service_networks(s) {
                networks.insert(n);
            }
        }
        let mut task_addrs: HashMap<String, BTreeMap<String, IpAddr>> = HashMap::new();
        for net in networks {
            let inspected = match self
                .docker
                .inspect_network(
                    &net,
                    Some(InspectNetworkOptions {
                        verbose: true,
                        scope: Some("swarm".into()),
                    }),
                )
                .await
            {
                Ok(n) => n,
                Err(e) => {
                    debug!(network = %net, error = %e, "docker: network inspect failed");
                    continue;
                }
            };
            let name = inspected.name.clone().unwrap_or(net);
            for svc in inspected.services.iter().flat_map(|m| m.values()) {
                let Some(list) = svc.get("Tasks").and_then(|t| t.as_array()) else {
                    continue;
                };
                for t in list {
                    let task_name = t.get("Name").and_then(|v| v.as_str()).unwrap_or_default();
                    let ip = t
                        .get("EndpointIP")
                        .and_then(|v| v.as_str())
                        .unwrap_or_default();
                    let (Some(task_id), Ok(ip)) = (task_name.rsplit('.').next(), ip.parse()) else {
                        continue;
                    };
                    task_addrs
                        .entry(task_id.to_string())
                        .or_default()
                        .insert(name.clone(), ip);
                }
            }
        }
        // Containers of local tasks also know their addresses (a fallback while
        // the network's view catches up).
        let mut container_addrs: HashMap<&str, BTreeMap<String, IpAddr>> = HashMap::new();
        for c in containers {
            if let Some(task) = c
                .labels
                .as_ref()
                .and_then(|l| l.get("com.docker.swarm.task.id"))
            {
                // A container whose HEALTHCHECK has not passed yet is not ready:
                // its task stays `starting` until it is, and waits for that.
                if !container_health_starting(c) {
                    container_addrs.insert(task.as_str(), container_networks(c));
                }
            }
        }

        let mut by_service: HashMap<&str, Vec<&Task>> = HashMap::new();
        for t in &tasks {
            if let Some(sid) = t.service_id.as_deref() {
                by_service.entry(sid).or_default().push(t);
            }
        }

        let mut out = Vec::new();
        for s in services {
            let (Some(id), Some(spec)) = (s.id.as_deref(), s.spec.as_ref()) else {
                continue;
            };
            let labels: BTreeMap<String, String> = spec
                .labels
                .clone()
                .unwrap_or_default()
                .into_iter()
                .collect();
            let dnsrr = spec
                .endpoint_spec
                .as_ref()
                .and_then(|e| e.mode)
                .is_some_and(|m| m == EndpointSpecModeEnum::DNSRR);
            let mut exposed: Vec<u16> = spec
                .endpoint_spec
                .as_ref()
                .and_then(|e| e.ports.as_ref())
                .into_iter()
                .flatten()
                .filter_map(|p| p.target_port.and_then(|t| u16::try_from(t).ok()))
                .collect();
            if exposed.is_empty() {
                if let Some(image) = spec
                    .task_template
                    .as_ref()
                    .and_then(|t| t.container_spec.as_ref())
                    .and_then(|c| c.image.clone())
                {
                    exposed = self.image_ports(&image).await;
                }
            }
            exposed.sort_unstable();
            exposed.dedup();

            let mut endpoints = Vec::new();
            for t in by_service.get(id).into_iter().flatten() {
                let Some(task_id) = t.id.as_deref() else {
                    continue;
                };
                // The manager marks a task running a little after its container
                // started (for an image with a HEALTHCHECK, once it is healthy); a
                // local container that runs, and is healthy if it has a check, is
                // good enough.
                let state = t.status.as_ref().and_then(|s| s.state);
                let started_here =
                    state == Some(TaskState::STARTING) && container_addrs.contains_key(task_id);
                if state != Some(TaskState::RUNNING) && !started_here {
                    continue;
                }
                // The manager learns that a task's container exited a moment
                // after this node's Engine does (a crash): a task of this node
                // whose container no longer runs is gone now, not when the
                // manager says so.
                let here =
                    self.node_id.is_some() && t.node_id.as_deref() == self.node_id.as_deref();
                if here && !running_here.contains(task_id) {
                    continue;
                }
                let container = t
                    .status
                    .as_ref()
                    .and_then(|s| s.container_status.as_ref())
                    .and_then(|c| c.container_id.as_deref());
                let shutting_down = t.desired_state != Some(TaskState::RUNNING);
                let sick = container.is_some_and(|c| unhealthy.contains(c));
                let mut addrs = task_addrs.get(task_id).cloned().unwrap_or_default();
                if let Some(local) = container_addrs.get(task_id) {
                    for (n, ip) in local {
                        addrs.entry(n.clone()).or_insert(*ip);
                    }
                }
                let service = spec.name.as_deref().unwrap_or(id);
                let identity = match (t.slot, t.node_id.as_deref()) {
                    (Some(slot), _) => format!("{service}.{slot}"),
                    (None, Some(node)) => format!("{service}.{node}"),
                    (None, None) => task_id.to_string(),
                };
                endpoints.push(Endpoint {
                    id: task_id.to_string(),
                    addrs,
                    draining: shutting_down || sick,
                    identity,
                });
            }
            endpoints.sort_by(|a, b| a.id.cmp(&b.id));
            out.push(Workload {
                kind: Kind::Service,
                id: id.to_string(),
                name: spec.name.clone().unwrap_or_else(|| id.to_string()),
                created: created_key(daemon_epoch(s.created_at.as_deref())),
                labels,
                exposed_ports: exposed,
                dnsrr,
                endpoints,
            });
        }
        Ok(out)
    }

    async fn image_ports(&mut self, image: &str) -> Vec<u16> {
        if let Some(p) = self.images.get(image) {
            return p.clone();
        }
        // A swarm image reference may carry a digest the local store does not
        // index by (`name:tag@sha256:...`); try it whole, then without it.
        let mut ports = None;
        for candidate in [image, image.split('@').next().unwrap_or(image)] {
            if let Ok(inspected) = self.docker.inspect_image(candidate).await {
                ports = Some(
                    inspected
                        .config
                        .and_then(|c| c.exposed_ports)
                        .unwrap_or_default()
                        .iter()
                        .filter_map(|p| parse_port(p))
                        .collect::<Vec<u16>>(),
                );
                break;
            }
        }
        match ports {
            Some(p) => {
                self.images.insert(image.to_string(), p.clone());
                p
            }
            // Not on this node: unknown, and worth asking again next time.
            None => Vec::new(),
        }
    }
}

/// An Engine timestamp (RFC 3339, UTC as the Engine writes it) as time since the epoch.
fn daemon_epoch(ts: Option<&str>) -> Option<Duration> {
    let t = humantime::parse_rfc3339_weak(ts?.trim()).ok()?;
    t.duration_since(std::time::UNIX_EPOCH).ok()
}

/// Creation time as a sortable key (zero-padded nanoseconds), comparable between
/// services and containers; unknown sorts last.
fn created_key(t: Option<Duration>) -> String {
    match t {
        Some(d) => format!("{:024}", d.as_nanos()),
        None => "9".repeat(24),
    }
}

/// `80/tcp` → 80; other protocols are not HTTP.
fn parse_port(p: &str) -> Option<u16> {
    let (port, proto) = p.split_once('/').unwrap_or((p, "tcp"));
    (proto == "tcp").then(|| port.parse().ok()).flatten()
}

fn tasks_digest(tasks: &[Task]) -> Vec<(String, String, String)> {
    let mut d: Vec<(String, String, String)> = tasks
        .iter()
        .map(|t| {
            (
                t.id.clone().unwrap_or_default(),
                format!("{:?}", t.status.as_ref().and_then(|s| s.state)),
                format!("{:?}", t.desired_state),
            )
        })
        .collect();
    d.sort();
    d
}

/// The networks a service's tasks join (IDs or names, as the spec holds them).
fn service_networks(s: &Service) -> Vec<String> {
    let Some(spec) = s.spec.as_ref() else {
        return Vec::new();
    };
    let from_template = spec
        .task_template
        .as_ref()
        .and_then(|t| t.networks.as_ref());
    from_template
        .or(spec.networks.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|n| n.target.clone())
        .collect()
}

fn container_networks(c: &ContainerSummary) -> BTreeMap<String, IpAddr> {
    let mut out = BTreeMap::new();
    for (name, ep) in c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .into_iter()
        .flatten()
    {
        let v4 = ep.ip_address.as_deref().and_then(|a| a.parse().ok());
        let v6 = ep
            .global_ipv6_address
            .as_deref()
            .and_then(|a| a.parse().ok());
        if let Some(ip) = v4.or(v6) {
            out.insert(name.clone(), ip);
        }
    }
    out
}

fn container_unhealthy(c: &ContainerSummary) -> bool {
    if let Some(h) = c.health.as_ref().and_then(|h| h.status) {
        return h == ContainerSummaryHealthStatusEnum::UNHEALTHY;
    }
    // Engines older than API 1.52 report health only inside the status text.
    c.status
        .as_deref()
        .is_some_and(|s| s.contains("(unhealthy)"))
}

/// Has a HEALTHCHECK that has not passed yet (`health: starting`).
fn container_health_starting(c: &ContainerSummary) -> bool {
    if let Some(h) = c.health.as_ref().and_then(|h| h.status) {
        return h == ContainerSummaryHealthStatusEnum::STARTING;
    }
    c.status
        .as_deref()
        .is_some_and(|s| s.contains("(health: starting)"))
}

/// Containers of one compose project and service (`docker compose up --scale
/// web=3`) are one workload, as a swarm service's tasks are: one route, every
/// replica a backend. Each keeps its container name as its identity (compose
/// names it `project-service-N`, and a recreated replica takes the name back),
/// so sticky tokens stay stable per replica. The newest replica's labels speak
/// for the group (after `up` with changed labels they are the current ones);
/// the oldest creation time is the group's. One-off containers (`docker compose
/// run`, labelled `com.docker.compose.oneoff=True`) are not replicas and are not
/// routed at all: they carry the service's labels but run a command.
fn group_compose(workloads: Vec<Workload>) -> Vec<Workload> {
    let mut out: Vec<Workload> = Vec::with_capacity(workloads.len());
    // Per group: its index in `out`, and the creation time of the replica whose
    // labels it carries (the newest so far).
    let mut groups: BTreeMap<(String, String), (usize, String)> = BTreeMap::new();
    for w in workloads {
        if w.kind == Kind::Container
            && w.labels
                .get("com.docker.compose.oneoff")
                .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            continue;
        }
        let key = match (
            w.labels.get("com.docker.compose.project"),
            w.labels.get("com.docker.compose.service"),
        ) {
            (Some(p), Some(s)) if w.kind == Kind::Container && !p.is_empty() && !s.is_empty() => {
                (p.clone(), s.clone())
            }
            _ => {
                out.push(w);
                continue;
            }
        };
        match groups.get_mut(&key) {
            None => {
                groups.insert(key.clone(), (out.len(), w.created.clone()));
                out.push(Workload {
                    id: format!("compose:{}/{}", key.0, key.1),
                    name: format!("{}-{}", key.0, key.1),
                    ..w
                });
            }
            Some((i, newest)) => {
                let g = &mut out[*i];
                if w.created > *newest {
                    newest.clone_from(&w.created);
                    g.labels = w.labels;
                }
                if w.created < g.created {
                    g.created = w.created;
                }
                g.exposed_ports.extend(w.exposed_ports);
                g.exposed_ports.sort_unstable();
                g.exposed_ports.dedup();
                g.endpoints.extend(w.endpoints);
                g.endpoints.sort_by(|a, b| a.identity.cmp(&b.identity));
            }
        }
    }
    out
}

fn container_workload(c: &ContainerSummary, include_unlabelled: bool) -> Option<Workload> {
    let labels = c.labels.as_ref();
    // Task containers are routed through their service.
    if labels.is_some_and(|l| l.contains_key("com.docker.swarm.service.id")) {
        return None;
    }
    if !include_unlabelled && !labels.is_some_and(interesting) {
        return None;
    }
    let id = c.id.clone()?;
    let name = c
        .names
        .as_ref()
        .and_then(|n| n.first())
        .map(|n| n.trim_start_matches('/').to_string())
        .unwrap_or_else(|| id.chars().take(12).collect());
    let mut exposed: Vec<u16> = c
        .ports
        .iter()
        .flatten()
        .filter(|p| {
            p.typ
                .is_none_or(|t| t == bollard::models::PortSummaryTypeEnum::TCP)
        })
        .map(|p| p.private_port)
        .collect();
    exposed.sort_unstable();
    exposed.dedup();
    let paused = c.state == Some(bollard::models::ContainerSummaryStateEnum::PAUSED);
    // Health-gated start: a container whose HEALTHCHECK has not passed yet gets
    // no traffic (its route answers 503 when it is the only one).
    let endpoints = if container_health_starting(c) {
        Vec::new()
    } else {
        vec![Endpoint {
            id: id.clone(),
            addrs: container_networks(c),
            draining: paused || container_unhealthy(c),
            identity: name.clone(),
        }]
    };
    Some(Workload {
        kind: Kind::Container,
        endpoints,
        id,
        name,
        created: created_key(
            c.created
                .and_then(|secs| u64::try_from(secs).ok())
                .map(Duration::from_secs),
        ),
        labels: labels.cloned().unwrap_or_default().into_iter().collect(),
        exposed_ports: exposed,
        dnsrr: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn creation_order_is_by_time_whatever_the_kind() {
        let svc = created_key(daemon_epoch(Some("2026-11-23T10:00:00.5Z")));
        let svc_whole = created_key(daemon_epoch(Some("2026-11-23T10:00:00Z")));
        let ctr = created_key(Some(Duration::from_secs(1_795_427_999)));
        assert!(svc_whole < svc, "fractions sort after whole seconds");
        assert!(
            ctr < svc_whole,
            "an older container sorts before a newer service"
        );
        assert!(created_key(None) > svc);
    }

    fn container(name: &str, created: &str, labels: &[(&str, &str)]) -> Workload {
        Workload {
            kind: Kind::Container,
            id: format!("id-{name}"),
            name: name.into(),
            created: created.into(),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            exposed_ports: vec![80],
            dnsrr: false,
            endpoints: vec![Endpoint {
                id: format!("id-{name}"),
                addrs: BTreeMap::new(),
                draining: false,
                identity: name.into(),
            }],
        }
    }

    #[test]
    fn compose_replicas_are_one_workload() {
        let web = |n: &str, created: &str, host: &str| {
            container(
                n,
                created,
                &[
                    ("com.docker.compose.project", "shop"),
                    ("com.docker.compose.service", "web"),
                    ("wharf.host", host),
                ],
            )
        };
        let out = group_compose(vec![
            web("shop-web-2", "2", "old.test"),
            container("lone", "3", &[("wharf.host", "l.test")]),
            web("shop-web-1", "1", "old.test"),
            web("shop-web-3", "4", "new.test"),
            container(
                "shop-db-1",
                "5",
                &[
                    ("com.docker.compose.project", "shop"),
                    ("com.docker.compose.service", "db"),
                ],
            ),
        ]);
        assert_eq!(out.len(), 3);
        let g = &out[0];
        assert_eq!(g.id, "compose:shop/web");
        assert_eq!(g.name, "shop-web");
        assert_eq!(g.created, "1");
        assert_eq!(
            g.labels["wharf.host"], "new.test",
            "the newest replica's labels"
        );
        let ids: Vec<&str> = g.endpoints.iter().map(|e| e.identity.as_str()).collect();
        assert_eq!(ids, ["shop-web-1", "shop-web-2", "shop-web-3"]);
        assert_eq!(out[1].name, "lone");
        assert_eq!(out[2].id, "compose:shop/db");

        // The newest replica's labels whatever the listing order; a one-off
        // `docker compose run` container is not a replica and not routed.
        let mut oneoff = web("shop-web-run-1", "9", "run.test");
        oneoff
            .labels
            .insert("com.docker.compose.oneoff".into(), "True".into());
        let out = group_compose(vec![
            web("shop-web-1", "1", "a.test"),
            web("shop-web-3", "3", "c.test"),
            web("shop-web-2", "2", "b.test"),
            oneoff,
        ]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].labels["wharf.host"], "c.test");
        assert_eq!(out[0].created, "1");
        assert_eq!(out[0].endpoints.len(), 3);
    }

    /// Drives [`Retry`] through a session that ends at `now` (after listing at
    /// `listed`, or never listing) and returns when the next one starts.
    fn after(r: &mut Retry, listed: Option<Instant>, jitter: f64) -> Duration {
        let now = Instant::now();
        r.next(listed, now, jitter) - now
    }

    #[tokio::test(start_paused = true)]
    async fn a_dead_api_is_asked_again_every_second_however_long_it_is_gone() {
        let mut r = Retry::new();
        // A session that listed and was cut after 40 s (a socket proxy stopped).
        let listed = Instant::now();
        tokio::time::advance(Duration::from_secs(40)).await;
        assert_eq!(after(&mut r, Some(listed), 0.9), Duration::ZERO);
        // Ten minutes without an answer: never more than a second apart, and
        // never less than half of one.
        let start = Instant::now();
        let mut tries = 0;
        while start.elapsed() < Duration::from_secs(600) {
            for jitter in [0.0, 0.5, 0.999] {
                let wait = after(&mut r, None, jitter);
                assert!(wait >= Duration::from_millis(500), "{wait:?}");
                assert!(wait <= DOWN_RETRY, "{wait:?}");
            }
            let wait = after(&mut r, None, fastrand::f64());
            tokio::time::advance(wait).await;
            tries += 1;
        }
        assert!((600..=1200).contains(&tries), "{tries} tries in 10 minutes");
        // The API answers again: the session that lists is the next one, at
        // most a second away; and after it lasted, a cut is followed at once.
        let listed = Instant::now();
        tokio::time::advance(Duration::from_secs(HEALTHY_SESSION.as_secs() + 1)).await;
        assert_eq!(after(&mut r, Some(listed), 0.999), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn a_short_session_after_an_outage_still_resyncs_within_a_second() {
        let mut r = Retry::new();
        // Listed, cut 2 s later (the test's proxy stop), then down for 45 s.
        let listed = Instant::now();
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(after(&mut r, Some(listed), 0.999), Duration::ZERO);
        for _ in 0..60 {
            let wait = after(&mut r, None, 0.999);
            assert!(wait <= DOWN_RETRY);
            tokio::time::advance(wait).await;
        }
        // Listed again, cut again 3 s later: still no wait beyond the retry.
        let listed = Instant::now();
        tokio::time::advance(Duration::from_secs(3)).await;
        assert_eq!(after(&mut r, Some(listed), 0.999), Duration::ZERO);
        assert!(after(&mut r, None, 0.999) <= DOWN_RETRY);
    }

    #[tokio::test(start_paused = true)]
    async fn an_endpoint_that_refuses_events_is_not_relisted_in_a_loop() {
        let mut r = Retry::new();
        let start = Instant::now();
        let mut listings = Vec::new();
        // Every session lists, then fails 5 ms later on `/events`.
        while start.elapsed() < Duration::from_secs(600) {
            let listed = Instant::now();
            listings.push(listed);
            tokio::time::advance(Duration::from_millis(5)).await;
            let wait = after(&mut r, Some(listed), fastrand::f64());
            tokio::time::advance(wait).await;
        }
        let gaps: Vec<Duration> = listings.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(gaps[0] >= BACKOFF_MIN / 2, "the first gap: {:?}", gaps[0]);
        assert!(gaps.windows(2).all(|g| g[1] >= g[0] / 2), "{gaps:?}");
        // Capped at 30 s: from the tenth listing on, 15 to 30 s apart.
        for g in &gaps[9..] {
            assert!(*g >= BACKOFF_MAX / 2 && *g <= BACKOFF_MAX + Duration::from_millis(5));
        }
        // About 20 to 40 listings in the first ten minutes, not thousands.
        assert!(listings.len() < 60, "{} listings", listings.len());
        // A session that then stays up for 30 s starts the backoff again.
        let listed = Instant::now();
        tokio::time::advance(HEALTHY_SESSION).await;
        assert_eq!(after(&mut r, Some(listed), 0.999), Duration::ZERO);
        assert_eq!(r.backoff, BACKOFF_MIN * 2);
    }

    #[test]
    fn ports_parse() {
        assert_eq!(parse_port("80/tcp"), Some(80));
        assert_eq!(parse_port("53/udp"), None);
        assert_eq!(parse_port("8080"), Some(8080));
        assert_eq!(parse_port("x/tcp"), None);
    }

    #[test]
    fn interesting_is_case_insensitive() {
        let mut l = HashMap::new();
        l.insert("com.example".to_string(), "x".to_string());
        assert!(!interesting(&l));
        l.insert("Traefik.enable".to_string(), "true".to_string());
        assert!(interesting(&l));
    }
}
