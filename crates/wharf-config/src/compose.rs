//! Compose and stack files, for `wharf check --compose`: each service's labels and
//! exposed ports, run through [`service_routes`](crate::service_routes) exactly as
//! the Docker provider will, plus the one check a single service cannot make: a
//! host and path claimed by two services (the first in file order keeps it). One
//! difference: files that labels name (`wharf.backend-tls.ca`, ...) are not opened,
//! as they are in Wharf's container rather than where the check runs.
//!
//! Reads the YAML only: no variable interpolation (`${VAR}` stays as written; run
//! `docker compose config` first to check the expanded file), no Docker.

use std::collections::BTreeMap;

use serde_yaml::Value;

use crate::labels::{service_routes_with, LabelOptions, LabelProblem, ServiceInput, Severity};
use crate::route::FileCheck;

/// One service of a compose file.
#[derive(Debug, Clone, PartialEq)]
pub struct ComposeService {
    pub name: String,
    /// `labels` overlaid with `deploy.labels` (which wins: it is what a swarm
    /// service carries).
    pub labels: BTreeMap<String, String>,
    /// Container ports from `expose:` and the targets of `ports:` (TCP only).
    pub exposed_ports: Vec<u16>,
    /// Problems with the file's shape for this service (not with label values).
    pub problems: Vec<LabelProblem>,
}

/// A file that is not YAML or not a compose file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ComposeError {
    /// 1-based line, when the YAML parser knows it.
    pub line: Option<usize>,
    pub message: String,
}

/// Reads a compose file's services in file order.
pub fn parse(text: &str) -> Result<Vec<ComposeService>, ComposeError> {
    let mut doc: Value = serde_yaml::from_str(text).map_err(|e| ComposeError {
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    doc.apply_merge().map_err(|e| ComposeError {
        line: e.location().map(|l| l.line()),
        message: e.to_string(),
    })?;
    let Some(services) = doc.get("services").and_then(Value::as_mapping) else {
        return Err(ComposeError {
            line: None,
            message: "no `services:` mapping: not a compose or stack file".into(),
        });
    };
    let mut out = Vec::new();
    for (name, svc) in services {
        let name = scalar(name).unwrap_or_default();
        let mut s = ComposeService {
            name: name.clone(),
            labels: BTreeMap::new(),
            exposed_ports: Vec::new(),
            problems: Vec::new(),
        };
        let mut shape = |label: &str, message: String| {
            s.problems.push(LabelProblem {
                service: name.clone(),
                label: label.into(),
                value: String::new(),
                message,
                severity: Severity::Error,
            })
        };
        let container = labels(svc.get("labels"), "labels", &mut shape);
        let deploy = labels(
            svc.get("deploy").and_then(|d| d.get("labels")),
            "deploy.labels",
            &mut shape,
        );
        let mut ports = Vec::new();
        if let Some(v) = svc.get("expose") {
            port_list(v, "expose", false, &mut ports, &mut shape);
        }
        if let Some(v) = svc.get("ports") {
            port_list(v, "ports", true, &mut ports, &mut shape);
        }
        for (k, v) in &deploy {
            let relevant = {
                let l = k.to_ascii_lowercase();
                l.starts_with("wharf.") || l.starts_with("traefik.")
            };
            if relevant && container.get(k).is_some_and(|c| c != v) {
                s.problems.push(LabelProblem {
                    service: name.clone(),
                    label: k.clone(),
                    value: v.clone(),
                    message: format!(
                        "also in `labels` with value {:?}; deploy.labels wins here and in \
                         swarm mode, a plain container (docker compose) uses `labels`",
                        container[k]
                    ),
                    severity: Severity::Warning,
                });
            }
        }
        s.labels = container;
        s.labels.extend(deploy);
        for p in ports {
            if !s.exposed_ports.contains(&p) {
                s.exposed_ports.push(p);
            }
        }
        out.push(s);
    }
    Ok(out)
}

fn scalar(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Null => Some(String::new()),
        _ => None,
    }
}

/// Compose writes a literal `$` as `$$` (its interpolation); the container gets
/// one `$`, so `wharf check` reads the value as Docker will (htpasswd hashes:
/// `admin:$$apr1$$...`, docs/labels.md).
fn unescape_dollars(v: &str) -> String {
    v.replace("$$", "$")
}

/// Labels in map form (`key: value`) or list form (`- "key=value"`).
fn labels(
    v: Option<&Value>,
    what: &str,
    shape: &mut dyn FnMut(&str, String),
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    match v {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                match (scalar(k), scalar(v)) {
                    (Some(k), Some(v)) => {
                        out.insert(k, unescape_dollars(&v));
                    }
                    _ => shape(what, "a label's key and value must be plain strings".into()),
                }
            }
        }
        Some(Value::Sequence(items)) => {
            for item in items {
                match scalar(item) {
                    Some(s) => {
                        let (k, v) = s.split_once('=').unwrap_or((s.as_str(), ""));
                        out.insert(k.to_string(), unescape_dollars(v));
                    }
                    None => shape(what, "a list label must be a string `key=value`".into()),
                }
            }
        }
        Some(_) => shape(
            what,
            "labels must be a mapping or a list of `key=value`".into(),
        ),
    }
    out
}

/// `expose: ["3000", "8000-8001"]` or `ports: ["8080:80", "127.0.0.1:443:8443/tcp",
/// {target: 80}]`: the container side, TCP only.
fn port_list(
    v: &Value,
    what: &str,
    published: bool,
    out: &mut Vec<u16>,
    shape: &mut dyn FnMut(&str, String),
) {
    let Some(items) = v.as_sequence() else {
        return shape(what, "must be a list".into());
    };
    for item in items {
        let text = match item {
            Value::Mapping(_) => {
                let proto = item.get("protocol").and_then(scalar).unwrap_or_default();
                if !proto.is_empty() && !proto.eq_ignore_ascii_case("tcp") {
                    continue;
                }
                match item.get("target").and_then(scalar) {
                    Some(t) => t,
                    None => {
                        shape(what, "a long-syntax port needs `target`".into());
                        continue;
                    }
                }
            }
            other => match scalar(other) {
                Some(s) => s,
                None => {
                    shape(what, format!("`{other:?}` is not a port"));
                    continue;
                }
            },
        };
        let (spec, proto) = text.split_once('/').unwrap_or((text.as_str(), "tcp"));
        if !proto.eq_ignore_ascii_case("tcp") {
            continue;
        }
        // HOST_IP:PUBLISHED:TARGET — the target is after the last colon.
        let target = if published {
            spec.rsplit(':').next().unwrap_or(spec)
        } else {
            spec
        };
        match port_range(target.trim()) {
            Some(ports) => out.extend(ports),
            None => shape(what, format!("`{text}` is not a port or port range")),
        }
    }
}

fn port_range(s: &str) -> Option<Vec<u16>> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let (a, b): (u16, u16) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
    // A range is a range of ports, not thousands of routes' worth of guesses.
    if a == 0 || b < a || b - a > 1024 {
        return None;
    }
    Some((a..=b).collect())
}

/// One line of `wharf check --compose` output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckLine {
    pub severity: Severity,
    /// `FILE: service NAME: LABEL="VALUE": MESSAGE` or `FILE:LINE: MESSAGE`.
    pub text: String,
}

/// What checking a set of compose files found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    pub lines: Vec<CheckLine>,
    pub services: usize,
    pub routes: usize,
}

impl CheckReport {
    pub fn has_errors(&self) -> bool {
        self.lines.iter().any(|l| l.severity == Severity::Error)
    }
}

struct Claim {
    file: String,
    service: String,
    entrypoints: Option<Vec<String>>,
}

/// Two routes meet on some entrypoint (`None` = every entrypoint). The same host
/// and path on disjoint entrypoints is no conflict, as for file routes.
pub(crate) fn overlap(a: &Option<Vec<String>>, b: &Option<Vec<String>>) -> bool {
    match (a, b) {
        (Some(a), Some(b)) => a.iter().any(|e| b.contains(e)),
        _ => true,
    }
}

/// What `[docker]` lets labels claim, for [`check_with`].
#[derive(Debug, Clone, Default)]
pub struct HostRules {
    pub allowed_domains: Vec<String>,
    pub allow_wildcards: bool,
}

/// Checks compose files `(origin, text)` together, as one Wharf would see their
/// services: each service's labels, then host and path claims across all of them
/// (the default host rules; `wharf check` uses [`check_with`]).
#[cfg(test)]
pub fn check(files: &[(String, String)], opts: &LabelOptions) -> CheckReport {
    check_with(files, opts, &HostRules::default())
}

/// Why a label may not claim `host` under `rules`, as Wharf refuses it at run
/// time (docs/discovery.md, "Host ownership").
pub fn host_refusal(host: &str, rules: &HostRules) -> Option<String> {
    let wildcard = host == "*" || host.starts_with("*.");
    if wildcard && !rules.allow_wildcards {
        return Some(if host == "*" {
            "`*` (every host; a Traefik rule without Host() means it too) is refused from \
             labels; name the hosts, or set [docker] allow_wildcards = true"
                .to_string()
        } else {
            format!(
                "the wildcard `{host}` is refused from labels; name the hosts, or set [docker] \
                 allow_wildcards = true"
            )
        });
    }
    let allowed = rules.allowed_domains.is_empty()
        || rules
            .allowed_domains
            .iter()
            .any(|a| match a.strip_prefix("*.") {
                Some(suffix) => host
                    .strip_suffix(suffix)
                    .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
                None => host == a,
            });
    (!allowed).then(|| {
        format!(
            "`{host}` is not within [docker] allowed_domains ({})",
            rules.allowed_domains.join(", ")
        )
    })
}

/// [`check`] under the config's `[docker]` host rules. Each file is one owner
/// (a stack or compose project): a host belongs to the first file that claims
/// it, and another file's service may route no path under it, unless the owner's
/// services set `wharf.allow-paths-from` naming the other file's project
/// (`compose:<project>` or `stack:<name>`, or `*`).
pub fn check_with(
    files: &[(String, String)],
    opts: &LabelOptions,
    rules: &HostRules,
) -> CheckReport {
    let mut report = CheckReport::default();
    // host → (file, the owners it lets in).
    let mut owners: BTreeMap<String, (String, Vec<String>)> = BTreeMap::new();
    // (host, path) → (file, service, entrypoints) of each claim kept.
    let mut claims: BTreeMap<(String, String), Vec<Claim>> = BTreeMap::new();
    for (origin, text) in files {
        let services = match parse(text) {
            Ok(s) => s,
            Err(e) => {
                let at = e.line.map(|l| format!(":{l}")).unwrap_or_default();
                report.lines.push(CheckLine {
                    severity: Severity::Error,
                    text: format!("{origin}{at}: {}", e.message),
                });
                continue;
            }
        };
        for svc in services {
            report.services += 1;
            let mut problems = svc.problems.clone();
            // The files labels name (`wharf.backend-tls.ca`, ...) are in Wharf's
            // container, not here: their paths are checked, not opened.
            let r = service_routes_with(
                &ServiceInput {
                    name: &svc.name,
                    labels: &svc.labels,
                    exposed_ports: &svc.exposed_ports,
                },
                opts,
                FileCheck::Skip,
            );
            problems.extend(r.problems.iter().cloned());
            if !r.has_errors() {
                let mut mine = Vec::new();
                let mut conflict = false;
                let project = project_of(origin);
                let allow = crate::labels::allow_paths_from(&svc.labels);
                for (route, (label, value)) in r.routes.iter().zip(&r.host_labels) {
                    for host in &route.hosts {
                        let refused = |message: String, problems: &mut Vec<LabelProblem>| {
                            problems.push(LabelProblem {
                                service: svc.name.clone(),
                                label: label.clone(),
                                value: value.clone(),
                                message,
                                severity: Severity::Error,
                            })
                        };
                        if let Some(message) = host_refusal(host, rules) {
                            conflict = true;
                            refused(message, &mut problems);
                            continue;
                        }
                        // Another file (owner) may not route any path under a host
                        // an earlier file holds, unless that owner lets it in.
                        let squat = owners.get(host).and_then(|(f, allowed)| {
                            let guest = allowed.iter().any(|a| {
                                a == "*"
                                    || *a == format!("compose:{project}")
                                    || *a == format!("stack:{project}")
                            });
                            (f != origin && !guest).then(|| {
                                format!(
                                    "host `{host}` belongs to {f}, which claims it first; another \
                                     owner may not route any path under it unless {f}'s services \
                                     set wharf.allow-paths-from=compose:{project}"
                                )
                            })
                        });
                        let key = (host.clone(), route.path.clone());
                        let eps = &route.entrypoints;
                        let first = claims
                            .get(&key)
                            .and_then(|c| c.iter().find(|c| overlap(&c.entrypoints, eps)));
                        match first {
                            Some(Claim {
                                file: f,
                                service: s,
                                ..
                            }) => {
                                conflict = true;
                                problems.push(LabelProblem {
                                    service: svc.name.clone(),
                                    label: label.clone(),
                                    value: value.clone(),
                                    message: format!(
                                        "host `{host}` with path `{}` is already claimed by \
                                         service {s} ({f}), which keeps it",
                                        route.path
                                    ),
                                    severity: Severity::Error,
                                })
                            }
                            None => match squat {
                                Some(message) => {
                                    conflict = true;
                                    refused(message, &mut problems);
                                }
                                None => mine.push((key, eps.clone())),
                            },
                        }
                    }
                }
                // A rejected service claims nothing: the first claimant keeps its hosts.
                if !conflict {
                    for ((host, _), _) in &mine {
                        let entry = owners
                            .entry(host.clone())
                            .or_insert_with(|| (origin.clone(), Vec::new()));
                        if entry.0 == *origin {
                            entry.1.extend(allow.iter().cloned());
                        }
                    }
                    for (key, entrypoints) in mine {
                        claims.entry(key).or_default().push(Claim {
                            file: origin.clone(),
                            service: svc.name.clone(),
                            entrypoints,
                        });
                    }
                    report.routes += r.routes.len();
                    for route in &r.routes {
                        for text in route.not_enforced() {
                            report.lines.push(CheckLine {
                                severity: Severity::Warning,
                                text: format!("{origin}: service {}: {text}", svc.name),
                            });
                        }
                    }
                }
            }
            for p in problems {
                report.lines.push(CheckLine {
                    severity: p.severity,
                    text: format!("{origin}: {p}"),
                });
            }
        }
    }
    report
}

/// The project name compose gives a file's services: its directory's name.
fn project_of(origin: &str) -> String {
    std::path::Path::new(origin)
        .canonicalize()
        .ok()
        .as_deref()
        .and_then(std::path::Path::parent)
        .and_then(std::path::Path::file_name)
        .map(|n| n.to_string_lossy().to_lowercase())
        .unwrap_or_else(|| origin.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STACK: &str = r#"
version: "3.8"
x-common: &common
  image: example/app
services:
  web:
    <<: *common
    expose: ["8080", 9000-9001/udp]
    ports:
      - "80"
      - "127.0.0.1:8443:443/tcp"
      - "[::1]:5353:53/udp"
      - target: 7000
        published: 17000
      - target: 7001
        protocol: udp
    deploy:
      labels:
        wharf.enable: "true"
        wharf.host: web.example.org
        wharf.port: 8080
    labels:
      - "wharf.host=old.example.org"
      - "other"
  api:
    image: example/api
    labels:
      wharf.enable: true
      wharf.host: api.example.org
  db:
    image: postgres
"#;

    #[test]
    fn doubled_dollars_are_one_dollar_as_compose_passes_them() {
        let s = parse(
            "services:\n  a:\n    labels:\n      wharf.basicauth.users: \"u:$$apr1$$x$$y\"\n  \
             b:\n    labels:\n      - \"wharf.basicauth.users=u:$$2y$$05$$z\"\n",
        )
        .unwrap();
        assert_eq!(s[0].labels["wharf.basicauth.users"], "u:$apr1$x$y");
        assert_eq!(s[1].labels["wharf.basicauth.users"], "u:$2y$05$z");
    }

    #[test]
    fn reads_services_labels_and_ports() {
        let s = parse(STACK).unwrap();
        let names: Vec<_> = s.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["web", "api", "db"]);
        let web = &s[0];
        assert_eq!(web.exposed_ports, vec![8080, 80, 443, 7000]);
        assert_eq!(
            web.labels["wharf.host"], "web.example.org",
            "deploy.labels wins"
        );
        assert_eq!(web.labels["wharf.port"], "8080");
        assert_eq!(web.labels["other"], "");
        assert_eq!(web.problems.len(), 1);
        assert_eq!(web.problems[0].severity, Severity::Warning);
        assert_eq!(web.problems[0].label, "wharf.host");
        assert!(web.problems[0].message.contains("old.example.org"));
        assert_eq!(
            s[1].labels["wharf.enable"], "true",
            "YAML booleans become text"
        );
        assert!(s[2].labels.is_empty());
    }

    #[test]
    fn shape_errors() {
        assert!(parse("").unwrap_err().message.contains("services"));
        assert!(parse("services: [a]").is_err());
        let e = parse("services:\n  a:\n    labels: [\n").unwrap_err();
        assert!(e.line.is_some(), "{e:?}");
        let s = parse("services:\n  a:\n    labels: 5\n    ports: [\"x:y\", 0, \"1-99999\"]\n")
            .unwrap();
        assert_eq!(s[0].problems.len(), 4, "{:#?}", s[0].problems);
    }

    #[test]
    fn a_host_claimed_twice_keeps_the_first() {
        let a = "services:\n  one:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: x.org}\n";
        let b = "services:\n  two:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: \"y.org,x.org\"}\n  three:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: y.org}\n";
        let r = check(
            &[("a.yml".into(), a.into()), ("b.yml".into(), b.into())],
            &LabelOptions::default(),
        );
        assert!(r.has_errors());
        assert_eq!(r.lines.len(), 1, "{:#?}", r.lines);
        assert_eq!(
            r.lines[0].text,
            "b.yml: service two: wharf.host=\"y.org,x.org\": host `x.org` with path `/` is \
             already claimed by service one (a.yml), which keeps it"
        );
        // `two` was rejected, so `three` may have y.org.
        assert_eq!((r.services, r.routes), (3, 2));
    }

    #[test]
    fn disjoint_entrypoints_do_not_conflict() {
        let svc = |name: &str, eps: &str| {
            format!("  {name}:\n    expose: [80]\n    labels: {{wharf.enable: true, wharf.host: x.org, wharf.entrypoints: \"{eps}\"}}\n")
        };
        let text = format!(
            "services:\n{}{}{}",
            svc("public", "websecure"),
            svc("internal", "internal"),
            svc("both", "internal,other")
        );
        let r = check(&[("s.yml".into(), text)], &LabelOptions::default());
        assert_eq!(r.lines.len(), 1, "{:#?}", r.lines);
        assert!(r.lines[0].text.contains("service both"));
        assert!(r.lines[0].text.contains("claimed by service internal"));
    }

    #[test]
    fn settings_not_enforced_yet_are_warnings() {
        // Sticky sessions, rate limits and maxconn are enforced: no line for them.
        let text = "services:\n  shop:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: x.org, wharf.sticky: cookie, wharf.ratelimit: 5/s, wharf.maxconn: 10}\n";
        let r = check(&[("s.yml".into(), text.into())], &LabelOptions::default());
        assert!(!r.has_errors(), "{:#?}", r.lines);
        assert!(r.lines.is_empty(), "{:#?}", r.lines);

        let text = "services:\n  shop:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: x.org, wharf.scheme: https, wharf.sticky: source}\n";
        let r = check(&[("s.yml".into(), text.into())], &LabelOptions::default());
        assert!(!r.has_errors(), "{:#?}", r.lines);
        // TLS to backends is enforced too.
        assert!(r.lines.is_empty(), "{:#?}", r.lines);
    }

    #[test]
    fn a_syntax_error_names_file_and_line() {
        let r = check(
            &[("s.yml".into(), "services:\n  a:\n    labels: [\n".into())],
            &LabelOptions::default(),
        );
        assert!(r.has_errors());
        assert!(r.lines[0].text.starts_with("s.yml:4: "), "{:?}", r.lines);
    }

    #[test]
    fn backend_tls_files_are_not_opened_here() {
        // The CA is in Wharf's container, not where `wharf check --compose` runs.
        let text = "services:\n  admin:\n    expose: [9443]\n    labels:\n      \
                    wharf.enable: true\n      wharf.host: admin.example.org\n      \
                    wharf.scheme: https\n      \
                    wharf.backend-tls.ca: /run/secrets/nonexistent-backend-ca.pem\n      \
                    wharf.backend-tls.server-name: admin.internal\n";
        let r = check(&[("s.yml".into(), text.into())], &LabelOptions::default());
        assert!(!r.has_errors(), "{:#?}", r.lines);
        assert_eq!(r.routes, 1);
        // Everything else is checked as the Docker provider checks it.
        let text = text.replace("wharf.scheme: https", "wharf.scheme: http");
        let r = check(&[("s.yml".into(), text)], &LabelOptions::default());
        assert!(r.has_errors());
        assert!(
            r.lines
                .iter()
                .all(|l| l.text.contains("only used with scheme = \"https\"")),
            "{:#?}",
            r.lines
        );
    }

    #[test]
    fn host_rules_from_the_config_and_its_environment() {
        let env = [
            ("WHARF_DOCKER_ALLOWED_DOMAINS", "Example.org,*.example.org."),
            ("WHARF_DOCKER_ALLOW_WILDCARDS", "true"),
            ("WHARF_ACME_MAX_NAMES", "7"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()));
        let cfg = crate::parse("", "t", env).unwrap();
        assert_eq!(cfg.docker.allowed_domains, ["example.org", "*.example.org"]);
        assert!(cfg.docker.allow_wildcards);
        assert_eq!(cfg.acme.max_names, 7);
        let defaults = crate::parse("", "t", std::iter::empty()).unwrap();
        assert!(!defaults.docker.allow_wildcards);
        assert_eq!(defaults.acme.max_names, 500);
        let bad = crate::parse(
            "[docker]\nallowed_domains = [\"ok.org\", \"*\", \"a b\"]\n",
            "t",
            std::iter::empty(),
        )
        .unwrap_err()
        .to_string();
        assert!(bad.contains("docker.allowed_domains[1]"), "{bad}");
        assert!(bad.contains("docker.allowed_domains[2]"), "{bad}");

        let rules = HostRules {
            allowed_domains: cfg.docker.allowed_domains.clone(),
            allow_wildcards: false,
        };
        assert!(host_refusal("*", &rules)
            .unwrap()
            .contains("allow_wildcards"));
        assert!(host_refusal("*.example.org", &rules).is_some());
        assert!(host_refusal("example.org", &rules).is_none());
        assert!(host_refusal("a.b.example.org", &rules).is_none());
        assert!(host_refusal("badexample.org", &rules)
            .unwrap()
            .contains("allowed_domains"));
        let open = HostRules {
            allow_wildcards: true,
            ..rules
        };
        assert!(host_refusal("*.example.org", &open).is_none());
        assert!(host_refusal("*", &open)
            .unwrap()
            .contains("allowed_domains"));
        assert!(host_refusal(
            "*",
            &HostRules {
                allow_wildcards: true,
                ..HostRules::default()
            }
        )
        .is_none());
    }
}
