//! How many Wharf replicas run, for rate limits with `scope = "cluster"`: each
//! replica enforces the configured rate divided by the number of live replicas,
//! so that together they enforce it without a shared store.
//!
//! The replicas are the peers of this process's own container: the running tasks
//! of its swarm service, or the running containers of its compose project and
//! service. The own container is found through `/proc/self/mountinfo` (Docker
//! bind-mounts `/etc/hostname`, `/etc/hosts` and `/etc/resolv.conf` from
//! `.../containers/<id>/`), else through the host name (Docker's default is the
//! ID's first 12 characters). Anything else counts as one replica.

use std::collections::HashMap;
use std::time::Duration;

use bollard::models::{ContainerSummary, ContainerSummaryStateEnum, Task, TaskState};
use bollard::query_parameters::{ListContainersOptions, ListTasksOptions};
use bollard::Docker;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::client;

const SWARM_SERVICE: &str = "com.docker.swarm.service.id";
const SWARM_TASK: &str = "com.docker.swarm.task.id";
const COMPOSE_PROJECT: &str = "com.docker.compose.project";
const COMPOSE_SERVICE: &str = "com.docker.compose.service";

/// Starts the task that keeps the replica count current on the current runtime.
///
/// Every `interval`, while `wanted()` says some route divides its rate among the
/// replicas, it counts them through the Engine at `endpoint` and calls `set` with
/// the count (at least 1). A Docker error keeps the last count. It stops when
/// `cancel` is cancelled.
pub fn spawn_replicas(
    endpoint: String,
    interval: Duration,
    wanted: impl Fn() -> bool + Send + 'static,
    set: impl Fn(u32) + Send + 'static,
    cancel: CancellationToken,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut counter = Counter::new(endpoint);
        loop {
            if wanted() {
                if let Some(n) = counter.refresh().await {
                    set(n);
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    })
}

/// Which replicas this process is one of.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Group {
    /// A task of a swarm service.
    Swarm {
        service: String,
        task: Option<String>,
    },
    /// A container of a compose service.
    Compose {
        project: String,
        service: String,
        container: String,
    },
    /// Alone: not in a container, or in one that belongs to no service. The
    /// reason is logged.
    Alone(String),
}

struct Counter {
    endpoint: String,
    docker: Option<Docker>,
    /// Found once: a container's labels do not change.
    group: Option<Group>,
    /// The count last handed out.
    last: Option<u32>,
    /// A Docker error was logged and nothing succeeded since.
    failing: bool,
}

impl Counter {
    fn new(endpoint: String) -> Self {
        Counter {
            endpoint,
            docker: None,
            group: None,
            last: None,
            failing: false,
        }
    }

    /// The current count, or None after a Docker error (the last count stays).
    async fn refresh(&mut self) -> Option<u32> {
        match self.count().await {
            Ok(n) => {
                if self.failing {
                    self.failing = false;
                    info!("docker: replica count readable again");
                }
                if self.last != Some(n) {
                    info!(
                        replicas = n,
                        "rate limits with scope = cluster: {n} replicas share each rate"
                    );
                    self.last = Some(n);
                }
                Some(n)
            }
            Err(e) => {
                // A new connection next time: the old one may be what failed.
                self.docker = None;
                if !self.failing {
                    self.failing = true;
                    warn!(
                        error = %e,
                        replicas = self.last.unwrap_or(1),
                        "docker: cannot count the replicas for rate limits with scope = cluster; \
                         keeping the last count"
                    );
                } else {
                    debug!(error = %e, "docker: replica count still unreadable");
                }
                None
            }
        }
    }

    async fn count(&mut self) -> Result<u32, String> {
        if let Some(Group::Alone(_)) = &self.group {
            return Ok(1);
        }
        let docker = match &self.docker {
            Some(d) => d.clone(),
            None => {
                let d = client::connect(&self.endpoint).await?;
                self.docker = Some(d.clone());
                d
            }
        };
        let group = match &self.group {
            Some(g) => g.clone(),
            None => {
                let g = own_group(&docker).await?;
                if let Group::Alone(why) = &g {
                    warn!(
                        "rate limits with scope = cluster: {why}; counting this replica alone \
                         (each replica enforces the whole rate)"
                    );
                }
                self.group = Some(g.clone());
                g
            }
        };
        match group {
            Group::Alone(_) => Ok(1),
            Group::Swarm { service, task } => {
                let mut filters = HashMap::new();
                filters.insert("service".to_string(), vec![service.clone()]);
                filters.insert("desired-state".to_string(), vec!["running".to_string()]);
                let tasks = docker
                    .list_tasks(Some(ListTasksOptions {
                        filters: Some(filters),
                    }))
                    .await
                    .map_err(|e| format!("listing the tasks of service {service}: {e}"))?;
                Ok(count_tasks(&tasks, &service, task.as_deref()))
            }
            Group::Compose {
                project,
                service,
                container,
            } => {
                let mut filters = HashMap::new();
                filters.insert(
                    "label".to_string(),
                    vec![
                        format!("{COMPOSE_PROJECT}={project}"),
                        format!("{COMPOSE_SERVICE}={service}"),
                    ],
                );
                filters.insert("status".to_string(), vec!["running".to_string()]);
                let containers = docker
                    .list_containers(Some(ListContainersOptions {
                        filters: Some(filters),
                        ..Default::default()
                    }))
                    .await
                    .map_err(|e| {
                        format!(
                            "listing the containers of compose service {project}/{service}: {e}"
                        )
                    })?;
                Ok(count_compose(&containers, &project, &service, &container))
            }
        }
    }
}

/// Finds and inspects this process's container. Err only for a Docker error
/// worth retrying; a container that cannot be found is [`Group::Alone`].
async fn own_group(docker: &Docker) -> Result<Group, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let candidate = container_id_from_mountinfo(&mountinfo).or_else(|| {
        let name = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .or_else(|| std::fs::read_to_string("/etc/hostname").ok())?;
        id_like_hostname(&name)
    });
    let Some(id) = candidate else {
        return Ok(Group::Alone(
            "no container ID in /proc/self/mountinfo nor in the host name \
             (not running in a Docker container?)"
                .into(),
        ));
    };
    let inspected = match docker.inspect_container(&id, None).await {
        Ok(c) => c,
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            return Ok(Group::Alone(format!(
                "container {id} is unknown to the Docker Engine (is docker.endpoint another \
                 host's, or is this not a container?)"
            )))
        }
        Err(e) => return Err(format!("inspecting the own container {id}: {e}")),
    };
    let full_id = inspected.id.clone().unwrap_or_else(|| id.clone());
    // A host name resolves as a container name before an ID prefix: make sure
    // it was the ID.
    if !full_id.starts_with(&id) {
        return Ok(Group::Alone(format!(
            "`{id}` names container {}, not this one",
            &full_id[..full_id.len().min(12)]
        )));
    }
    let labels = inspected
        .config
        .as_ref()
        .and_then(|c| c.labels.clone())
        .unwrap_or_default();
    Ok(group_of(&full_id, &labels))
}

/// The group of the container `id` with these labels.
fn group_of(id: &str, labels: &HashMap<String, String>) -> Group {
    if let Some(service) = labels.get(SWARM_SERVICE).filter(|s| !s.is_empty()) {
        return Group::Swarm {
            service: service.clone(),
            task: labels.get(SWARM_TASK).cloned(),
        };
    }
    match (labels.get(COMPOSE_PROJECT), labels.get(COMPOSE_SERVICE)) {
        (Some(project), Some(service)) if !project.is_empty() && !service.is_empty() => {
            Group::Compose {
                project: project.clone(),
                service: service.clone(),
                container: id.to_string(),
            }
        }
        _ => Group::Alone(format!(
            "container {} belongs to no swarm service ({SWARM_SERVICE}) nor compose service \
             ({COMPOSE_PROJECT} and {COMPOSE_SERVICE} labels)",
            &id[..id.len().min(12)]
        )),
    }
}

/// The container ID in the root of the `/etc/hostname`, `/etc/hosts` or
/// `/etc/resolv.conf` bind mount (`.../containers/<64 hex>/hostname`). Only
/// those mount points count: on a Docker host, the host's own mount table lists
/// containers' `/dev/shm` mounts from the same directory.
fn container_id_from_mountinfo(text: &str) -> Option<String> {
    for line in text.lines() {
        // id parent major:minor root mount-point options ... - fstype source
        let mut fields = line.split_whitespace();
        let (Some(root), Some(mount_point)) = (fields.nth(3), fields.next()) else {
            continue;
        };
        if !matches!(
            mount_point,
            "/etc/hostname" | "/etc/hosts" | "/etc/resolv.conf"
        ) {
            continue;
        }
        let mut rest = root;
        while let Some(at) = rest.find("/containers/") {
            rest = &rest[at + "/containers/".len()..];
            let id = rest.split('/').next().unwrap_or_default();
            if id.len() == 64 && is_hex(id) && rest.len() > 64 {
                return Some(id.to_string());
            }
        }
    }
    None
}

/// A host name that can be a container ID prefix (Docker's default host name is
/// the ID's first 12 characters).
fn id_like_hostname(name: &str) -> Option<String> {
    let name = name.trim();
    (name.len() >= 12 && name.len() <= 64 && is_hex(name)).then(|| name.to_ascii_lowercase())
}

fn is_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Running tasks of `service` that are meant to run, counting `own` (this
/// process's task, which runs whatever the manager has recorded yet).
fn count_tasks(tasks: &[Task], service: &str, own: Option<&str>) -> u32 {
    let mut own_seen = false;
    let mut n = 0u32;
    for t in tasks {
        if t.service_id.as_deref() != Some(service) {
            continue;
        }
        let is_own = own.is_some() && t.id.as_deref() == own;
        let running = t.desired_state == Some(TaskState::RUNNING)
            && t.status.as_ref().and_then(|s| s.state) == Some(TaskState::RUNNING);
        if running || is_own {
            n += 1;
            own_seen |= is_own;
        }
    }
    if own.is_some() && !own_seen {
        n += 1;
    }
    n.max(1)
}

/// Running containers of the compose `project`'s `service`, counting `own`.
fn count_compose(containers: &[ContainerSummary], project: &str, service: &str, own: &str) -> u32 {
    let mut own_seen = false;
    let mut n = 0u32;
    for c in containers {
        let labels = c.labels.as_ref();
        let label = |k: &str| labels.and_then(|l| l.get(k)).map(String::as_str);
        if label(COMPOSE_PROJECT) != Some(project) || label(COMPOSE_SERVICE) != Some(service) {
            continue;
        }
        let is_own = c.id.as_deref() == Some(own);
        if c.state == Some(ContainerSummaryStateEnum::RUNNING) || is_own {
            n += 1;
            own_seen |= is_own;
        }
    }
    if !own_seen {
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::models::TaskStatus;

    const ID: &str = "3f4e8b1c2d9a7e6f5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a";

    fn mountinfo() -> String {
        format!(
            "585 500 0:52 / / rw,relatime master:240 - overlay overlay rw,lowerdir=/var/lib/docker/overlay2/l/ABC:/var/lib/docker/overlay2/l/DEF,upperdir=/var/lib/docker/overlay2/0123/diff,workdir=/var/lib/docker/overlay2/0123/work\n\
             586 585 0:55 / /proc rw,nosuid,nodev,noexec,relatime - proc proc rw\n\
             590 585 0:57 / /dev/shm rw,nosuid,nodev,noexec,relatime - tmpfs shm rw,size=65536k\n\
             591 585 8:1 /var/lib/docker/containers/{ID}/resolv.conf /etc/resolv.conf rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro\n\
             592 585 8:1 /var/lib/docker/containers/{ID}/hostname /etc/hostname rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro\n\
             593 585 8:1 /var/lib/docker/containers/{ID}/hosts /etc/hosts rw,relatime - ext4 /dev/sda1 rw,errors=remount-ro\n\
             594 585 0:24 /docker.sock /run/docker.sock rw,nosuid,nodev,noexec - tmpfs tmpfs rw,mode=755\n"
        )
    }

    #[test]
    fn mountinfo_gives_the_container_id() {
        assert_eq!(
            container_id_from_mountinfo(&mountinfo()).as_deref(),
            Some(ID)
        );
        // Only /etc/resolv.conf left, and a data-root elsewhere (Docker Desktop,
        // a custom data-root).
        let one = format!(
            "12 1 254:1 /docker/containers/{ID}/resolv.conf /etc/resolv.conf rw - ext4 /dev/vda1 rw\n"
        );
        assert_eq!(container_id_from_mountinfo(&one).as_deref(), Some(ID));
    }

    #[test]
    fn mountinfo_of_a_host_gives_nothing() {
        // A Docker host's own table lists containers' shm mounts: not ours.
        let host = format!(
            "25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n\
             700 25 0:60 / /var/lib/docker/containers/{ID}/mounts/shm rw,nosuid - tmpfs shm rw,size=65536k\n\
             701 25 8:1 /etc/hostname /etc/hostname rw - ext4 /dev/sda1 rw\n"
        );
        assert_eq!(container_id_from_mountinfo(&host), None);
        assert_eq!(container_id_from_mountinfo(""), None);
        // Not 64 hex characters, or the ID is the last component.
        let short =
            "1 1 8:1 /var/lib/docker/containers/abc123/hostname /etc/hostname rw - ext4 x rw\n";
        assert_eq!(container_id_from_mountinfo(short), None);
        let bare = format!("1 1 8:1 /var/lib/docker/containers/{ID} /etc/hosts rw - ext4 x rw\n");
        assert_eq!(container_id_from_mountinfo(&bare), None);
        // A truncated line.
        assert_eq!(container_id_from_mountinfo("1 1 8:1"), None);
    }

    #[test]
    fn hostnames_that_can_be_ids() {
        assert_eq!(
            id_like_hostname("3F4E8B1C2D9A\n").as_deref(),
            Some("3f4e8b1c2d9a")
        );
        assert_eq!(id_like_hostname(ID).as_deref(), Some(ID));
        assert_eq!(id_like_hostname("wharf-1"), None);
        assert_eq!(id_like_hostname("3f4e8b1c2d9"), None, "too short");
        assert_eq!(id_like_hostname(""), None);
    }

    fn labels(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn groups_from_labels() {
        assert_eq!(
            group_of(
                ID,
                &labels(&[
                    (SWARM_SERVICE, "svc1"),
                    (SWARM_TASK, "task1"),
                    // A stack deployed from a compose file has both.
                    (COMPOSE_PROJECT, "p"),
                    (COMPOSE_SERVICE, "s"),
                ])
            ),
            Group::Swarm {
                service: "svc1".into(),
                task: Some("task1".into())
            }
        );
        assert_eq!(
            group_of(
                ID,
                &labels(&[(COMPOSE_PROJECT, "p"), (COMPOSE_SERVICE, "s")])
            ),
            Group::Compose {
                project: "p".into(),
                service: "s".into(),
                container: ID.into()
            }
        );
        for alone in [
            labels(&[]),
            labels(&[(COMPOSE_PROJECT, "p")]),
            labels(&[(COMPOSE_PROJECT, "p"), (COMPOSE_SERVICE, "")]),
        ] {
            let g = group_of(ID, &alone);
            assert!(
                matches!(&g, Group::Alone(why) if why.contains("3f4e8b1c2d9a")),
                "{g:?}"
            );
        }
    }

    fn task(id: &str, service: &str, desired: TaskState, state: TaskState) -> Task {
        Task {
            id: Some(id.into()),
            service_id: Some(service.into()),
            desired_state: Some(desired),
            status: Some(TaskStatus {
                state: Some(state),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn running_tasks_are_counted() {
        use TaskState::*;
        let tasks = vec![
            task("a", "svc", RUNNING, RUNNING),
            task("b", "svc", RUNNING, RUNNING),
            task("c", "svc", RUNNING, STARTING),
            task("d", "svc", SHUTDOWN, RUNNING),
            task("e", "svc", RUNNING, FAILED),
            task("f", "other", RUNNING, RUNNING),
        ];
        assert_eq!(count_tasks(&tasks, "svc", Some("a")), 2);
        // The own task counts before the manager marks it running, once.
        assert_eq!(count_tasks(&tasks, "svc", Some("c")), 3);
        // Not listed yet at all.
        assert_eq!(count_tasks(&tasks, "svc", Some("z")), 3);
        assert_eq!(count_tasks(&tasks, "svc", None), 2);
        assert_eq!(count_tasks(&[], "svc", None), 1, "never 0");
    }

    fn container(
        id: &str,
        project: &str,
        service: &str,
        state: ContainerSummaryStateEnum,
    ) -> ContainerSummary {
        ContainerSummary {
            id: Some(id.into()),
            labels: Some(labels(&[
                (COMPOSE_PROJECT, project),
                (COMPOSE_SERVICE, service),
            ])),
            state: Some(state),
            ..Default::default()
        }
    }

    #[test]
    fn running_compose_containers_are_counted() {
        use ContainerSummaryStateEnum::*;
        let cs = vec![
            container("a", "p", "wharf", RUNNING),
            container("b", "p", "wharf", RUNNING),
            container("c", "p", "wharf", EXITED),
            container("d", "p", "web", RUNNING),
            container("e", "q", "wharf", RUNNING),
            ContainerSummary {
                id: Some("f".into()),
                state: Some(RUNNING),
                ..Default::default()
            },
        ];
        assert_eq!(count_compose(&cs, "p", "wharf", "a"), 2);
        assert_eq!(
            count_compose(&cs, "p", "wharf", "z"),
            3,
            "the own one counts"
        );
        assert_eq!(count_compose(&[], "p", "wharf", "a"), 1);
    }
}
