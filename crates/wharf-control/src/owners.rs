//! Host ownership (security review H2): which owner a host claimed by labels
//! belongs to, and which label claims are refused.
//!
//! An owner is what deploys together: a stack (`com.docker.stack.namespace`), a
//! compose project (`com.docker.compose.project`), a Traefik v1 backend group
//! (`traefik.backend`), else the swarm service or the lone container. The config
//! file is an owner of its own and always wins. A host belongs to the owner that
//! first claimed it as seen by this Wharf; the claims are remembered in the
//! certificate storage ([`Claims`]), so a redeploy of the owner (new containers,
//! new creation times) cannot hand its host to an older squatter. A claim whose
//! owner has been gone for [`CLAIM_EXPIRY`] is released.
//!
//! This module is pure: time comes in as seconds since the epoch, and reading or
//! writing the record is the caller's business.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use wharf_config::compose::{host_refusal, HostRules};
use wharf_table::RouteDef;

use crate::{ApplyReport, Problem};

/// How long a host stays reserved for an owner that no longer claims it. A
/// redeploy (`docker stack rm` + `deploy`, `compose down` + `up`) is well within
/// it; an owner gone for a day has moved on.
pub const CLAIM_EXPIRY: Duration = Duration::from_secs(24 * 3600);

use wharf_config::labels::ALLOW_PATHS_LABEL;

/// One host's owner as remembered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub owner: String,
    /// When this Wharf first saw the owner claim the host (seconds since the epoch).
    pub since: u64,
    /// Since when the owner has not claimed the host (`None`: it does now).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone_since: Option<u64>,
}

/// Every label host's owner: the persisted ownership record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Format version, so a later format can tell an old record.
    pub version: u32,
    pub hosts: BTreeMap<String, Claim>,
}

impl Claims {
    pub fn to_json(&self) -> String {
        let mut c = self.clone();
        c.version = 1;
        serde_json::to_string_pretty(&c).unwrap_or_default()
    }

    pub fn from_json(text: &str) -> Result<Claims, String> {
        let c: Claims = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if c.version > 1 {
            return Err(format!(
                "ownership record version {} is newer than this Wharf",
                c.version
            ));
        }
        Ok(c)
    }
}

/// What the control plane knows about one label route beside its definition.
#[derive(Debug, Clone)]
pub struct Meta {
    pub owner: String,
    /// `service web`, `container api-1`: how problems name it.
    pub service: String,
    /// `wharf.host=a.example.org`: the label that set its hosts, as written.
    pub host_label: Option<String>,
    /// Owners its owner lets add paths under its hosts (`*`: any).
    pub allow: Vec<String>,
    /// `traefik.backend` value: routes of one group with the same hosts and
    /// path share one backend set, as Traefik v1 merged their servers.
    pub backend_group: Option<String>,
}

/// The settings that restrict label hosts.
pub struct Rules<'a> {
    pub hosts: &'a HostRules,
    pub now: u64,
}

/// Merges label routes of one Traefik v1 backend group (same owner, same
/// `traefik.backend`, same hosts, path and entrypoints) into the first.
pub fn merge_backend_groups(defs: &mut Vec<RouteDef>, metas: &mut Vec<Meta>, first_label: usize) {
    let mut seen: HashMap<(String, String, Vec<String>, String, String), usize> = HashMap::new();
    let mut drop = BTreeSet::new();
    for i in first_label..defs.len() {
        let m = &metas[i - first_label];
        let Some(group) = m.backend_group.clone() else {
            continue;
        };
        let d = &defs[i];
        let key = (
            m.owner.clone(),
            group,
            d.hosts.clone(),
            d.path.clone(),
            format!("{:?}", d.entrypoints),
        );
        match seen.get(&key) {
            Some(&first) => {
                let extra = std::mem::take(&mut defs[i].backends);
                let into = &mut defs[first].backends;
                for b in extra {
                    if !into.iter().any(|x| x.addr == b.addr) {
                        into.push(b);
                    }
                }
                into.sort_by_key(|b| b.addr);
                drop.insert(i);
            }
            None => {
                seen.insert(key, i);
            }
        }
    }
    for i in drop.into_iter().rev() {
        defs.remove(i);
        metas.remove(i - first_label);
    }
}

/// Drops every label host claim that is refused — a wildcard without
/// `allow_wildcards`, a host outside `allowed_domains`, a host and path the
/// config file serves, a host another owner holds — with an error naming the
/// service, label and reason, and records the owners of the hosts that remain.
/// `defs[first_label..]` are label routes, `metas` theirs in the same order.
/// A route left with no host is dropped; no other owner's route is touched.
pub fn settle(
    defs: &mut Vec<RouteDef>,
    metas: &mut Vec<Meta>,
    first_label: usize,
    claims: &mut Claims,
    rules: &Rules,
    report: &mut ApplyReport,
) {
    let expiry = CLAIM_EXPIRY.as_secs();
    claims.hosts.retain(|_, c| {
        c.gone_since
            .is_none_or(|g| rules.now.saturating_sub(g) < expiry)
    });
    // Which owners let which others in.
    let mut allows: HashMap<&str, BTreeSet<&str>> = HashMap::new();
    for m in metas.iter() {
        allows
            .entry(m.owner.as_str())
            .or_default()
            .extend(m.allow.iter().map(String::as_str));
    }
    let allows: HashMap<String, BTreeSet<String>> = allows
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.into_iter().map(str::to_string).collect()))
        .collect();
    let may_join = |owner: &str, guest: &str| {
        allows
            .get(owner)
            .is_some_and(|a| a.contains(guest) || a.contains("*"))
    };

    let deployed: BTreeSet<String> = metas.iter().map(|m| m.owner.clone()).collect();
    let (file, labelled) = defs.split_at_mut(first_label);
    // New owners of unclaimed hosts, first claimant in snapshot order (creation
    // time) — the only place creation time still decides.
    let mut fresh: BTreeMap<String, String> = BTreeMap::new();
    let mut refusals: Vec<(usize, String, String)> = Vec::new();
    for (i, d) in labelled.iter().enumerate() {
        let m = &metas[i];
        for host in &d.hosts {
            let reason = if let Some(r) = host_refusal(host, rules.hosts) {
                Some(r)
            } else if let Some(f) = file.iter().find(|f| {
                // The file's path or anything under it: a longer label path would
                // take requests (and skip the auth) of the file's route.
                f.hosts.contains(host)
                    && wharf_table::prefix_matches(&f.path, &d.path)
                    && f.entrypoints.overlaps(d.entrypoints)
            }) {
                Some(format!(
                    "host `{host}` path `{}` is served by the config file's route `{}` \
                     (path `{}`), which always wins; labels may route only other paths \
                     of that host",
                    d.path, f.name, f.path
                ))
            } else {
                let holder = claims
                    .hosts
                    .get(host)
                    .map(|c| c.owner.clone())
                    .or_else(|| fresh.get(host).cloned());
                match holder {
                    None => {
                        fresh.insert(host.clone(), m.owner.clone());
                        None
                    }
                    Some(o) if o == m.owner => None,
                    Some(o) if may_join(&o, &m.owner) => {
                        // A guest may add paths, never take the owner's.
                        let clash = labelled.iter().zip(metas.iter()).find(|(x, xm)| {
                            xm.owner == o
                                && x.hosts.contains(host)
                                && x.path == d.path
                                && x.entrypoints.overlaps(d.entrypoints)
                        });
                        clash.map(|(x, _)| {
                            format!(
                                "host `{host}` path `{}` is served by `{}` of its owner `{o}`; \
                                 a guest may add other paths only",
                                d.path, x.name
                            )
                        })
                    }
                    Some(o) => {
                        let gone = if deployed.contains(&o) {
                            String::new()
                        } else {
                            format!(
                                " (it is gone now; the host stays reserved for {}h after it \
                                 left)",
                                expiry / 3600
                            )
                        };
                        let held_by = labelled
                            .iter()
                            .zip(metas.iter())
                            .find(|(x, xm)| xm.owner == o && x.hosts.contains(host))
                            .map(|(x, _)| format!(" (route `{}`)", x.name))
                            .unwrap_or_default();
                        Some(format!(
                            "host `{host}` belongs to `{o}`{held_by}, which claimed it first{gone}; \
                             another owner (`{}`) may not route any path under it unless `{o}` \
                             sets {ALLOW_PATHS_LABEL}={}",
                            m.owner, m.owner
                        ))
                    }
                }
            };
            if let Some(reason) = reason {
                refusals.push((i, host.clone(), reason));
            }
        }
    }

    for (i, host, reason) in &refusals {
        let m = &metas[*i];
        report.problems.push(Problem {
            source: "docker",
            service: Some(m.service.clone()),
            label: m.host_label.clone(),
            message: format!("route `{}`: {reason}", labelled[*i].name),
            error: true,
        });
        labelled[*i].hosts.retain(|h| h != host);
    }

    // Remember who holds what now.
    let mut present: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
    for (d, m) in labelled.iter().zip(metas.iter()) {
        for h in &d.hosts {
            present
                .entry(h.as_str())
                .or_default()
                .insert(m.owner.as_str());
        }
    }
    for (host, owner) in fresh {
        if present
            .get(host.as_str())
            .is_some_and(|o| o.contains(owner.as_str()))
        {
            claims.hosts.insert(
                host,
                Claim {
                    owner,
                    since: rules.now,
                    gone_since: None,
                },
            );
        }
    }
    for (host, c) in claims.hosts.iter_mut() {
        let here = present
            .get(host.as_str())
            .is_some_and(|o| o.contains(c.owner.as_str()));
        match (here, c.gone_since) {
            (true, Some(_)) => c.gone_since = None,
            (false, None) => c.gone_since = Some(rules.now),
            _ => {}
        }
    }

    // Routes left without a host go, with their metadata.
    let mut i = first_label;
    while i < defs.len() {
        if defs[i].hosts.is_empty() {
            defs.remove(i);
            metas.remove(i - first_label);
        } else {
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wharf_table::{Balance, EntrypointMask, Policy};

    fn def(name: &str, host: &str) -> RouteDef {
        RouteDef {
            name: name.into(),
            source: "docker".into(),
            hosts: vec![host.into()],
            path: "/".into(),
            entrypoints: EntrypointMask::ALL,
            balance: Balance::RoundRobin,
            backends: Vec::new(),
            policy: Policy::default(),
        }
    }

    fn meta(owner: &str) -> Meta {
        Meta {
            owner: owner.into(),
            service: format!("service {owner}"),
            host_label: Some("wharf.host=h.test".into()),
            allow: Vec::new(),
            backend_group: None,
        }
    }

    fn run(claims: &mut Claims, owners: &[&str], now: u64) -> (Vec<RouteDef>, ApplyReport) {
        let mut defs: Vec<RouteDef> = owners.iter().map(|o| def(o, "h.test")).collect();
        let mut metas: Vec<Meta> = owners.iter().map(|o| meta(o)).collect();
        let mut report = ApplyReport::default();
        let hosts = HostRules::default();
        settle(
            &mut defs,
            &mut metas,
            0,
            claims,
            &Rules { hosts: &hosts, now },
            &mut report,
        );
        (defs, report)
    }

    #[test]
    fn a_claim_is_released_only_after_its_owner_is_gone_for_the_expiry() {
        let mut claims = Claims::default();
        let (defs, _) = run(&mut claims, &["a"], 100);
        assert_eq!(defs.len(), 1);
        assert_eq!(claims.hosts["h.test"].owner, "a");
        // `a` leaves at 200; `b` is refused until the expiry has passed.
        let (defs, r) = run(&mut claims, &["b"], 200);
        assert!(defs.is_empty());
        assert_eq!(r.problems.len(), 1);
        assert_eq!(claims.hosts["h.test"].gone_since, Some(200));
        let expiry = CLAIM_EXPIRY.as_secs();
        let (defs, _) = run(&mut claims, &["b"], 200 + expiry - 1);
        assert!(defs.is_empty());
        // `a` comes back in time: the clock of its absence stops.
        run(&mut claims, &["a"], 300);
        assert_eq!(claims.hosts["h.test"].gone_since, None);
        run(&mut claims, &[], 400);
        let (defs, r) = run(&mut claims, &["b"], 400 + expiry);
        assert_eq!(defs.len(), 1, "{:?}", r.problems);
        assert_eq!(claims.hosts["h.test"].owner, "b");
        assert_eq!(claims.hosts["h.test"].since, 400 + expiry);
        // The record round-trips.
        assert_eq!(
            Claims::from_json(&claims.to_json()).unwrap().hosts,
            claims.hosts
        );
    }
}
