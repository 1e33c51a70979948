//! The Docker provider: what runs on the Engine (swarm services and their tasks,
//! plain containers), as an immutable [`Snapshot`] published on a watch channel.
//!
//! It knows nothing about labels' meaning or routes: it reports workloads with
//! their labels, exposed ports and the addresses of their endpoints per network,
//! and the control plane turns that into routes. It lists everything on start and
//! after every reconnect, follows the event stream in between (re-listing after a
//! short debounce), and polls swarm tasks, because task changes on other nodes
//! emit no local event. While the Engine is unreachable the last snapshot stays
//! published and the provider tries again every second or so; sessions that
//! fail soon after their listing (a proxy refusing the event stream) space
//! their listings out with capped exponential backoff instead.

mod client;
mod list;
mod replicas;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use client::endpoint_from_env;
pub use replicas::spawn_replicas;

/// Which Docker objects to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Swarm services when this node is a swarm manager, plus plain containers.
    Auto,
    Swarm,
    Containers,
}

#[derive(Debug, Clone)]
pub struct DockerSettings {
    /// `unix:///path`, `tcp://host:port` or `http://host:port`.
    pub endpoint: String,
    pub mode: Mode,
    /// How often swarm tasks are listed (one API call; more only when they changed).
    pub poll_interval: Duration,
    /// Quiet time after an event before re-listing, so a burst costs one listing.
    pub debounce: Duration,
    /// Report workloads without any `wharf.*`/`traefik.*` label too
    /// (`docker.exposed_by_default`).
    pub include_unlabelled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Service,
    Container,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Service => "service",
            Kind::Container => "container",
        }
    }
}

/// One task of a service, or a container: where it can be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// Task or container ID.
    pub id: String,
    /// Its address on each network it is attached to, by network name.
    pub addrs: BTreeMap<String, IpAddr>,
    /// Docker says it is unhealthy or shutting down: keep it, send it nothing new.
    pub draining: bool,
    /// A name that outlives the task or container: `service.slot` for a
    /// replicated service's task (its replacement takes the slot), `service.node`
    /// for a global one, the container name for a container (compose names it
    /// `project-service-N`, and a recreated container keeps it). Sticky tokens
    /// are made of it.
    pub identity: String,
}

/// A swarm service or a plain container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub kind: Kind,
    pub id: String,
    pub name: String,
    /// Creation time (seconds since the epoch, or an RFC 3339 string's order) used
    /// to decide which of two claimants of a host came first.
    pub created: String,
    /// Service `deploy.labels` or container labels.
    pub labels: BTreeMap<String, String>,
    /// Ports the image or container exposes (for a default `wharf.port`).
    pub exposed_ports: Vec<u16>,
    /// `endpoint_mode: dnsrr`: tasks are found through Docker's DNS.
    pub dnsrr: bool,
    pub endpoints: Vec<Endpoint>,
}

/// Everything the provider saw in one listing, sorted by creation then name.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub workloads: Vec<Workload>,
}

/// Connection state, for logs, the admin API and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderState {
    Connecting,
    Connected {
        swarm: bool,
    },
    /// The API stopped answering at `since` (wall clock, for people); `error`
    /// is the latest reason. The last snapshot stays published meanwhile.
    Unreachable {
        error: String,
        since: std::time::SystemTime,
    },
}

/// A running provider. Dropping it does not stop it; cancel the token given to
/// [`spawn`].
pub struct DockerProvider {
    pub snapshots: watch::Receiver<Option<Arc<Snapshot>>>,
    pub state: watch::Receiver<ProviderState>,
}

/// Starts the provider on the current runtime.
pub fn spawn(settings: DockerSettings, cancel: CancellationToken) -> DockerProvider {
    let (snap_tx, snapshots) = watch::channel(None);
    let (state_tx, state) = watch::channel(ProviderState::Connecting);
    tokio::spawn(list::run(settings, snap_tx, state_tx, cancel));
    DockerProvider { snapshots, state }
}
