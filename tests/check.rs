//! `wharf check --compose`: the real binary on compose and stack files written to a
//! temporary directory, checking exit codes and the lines an owner reads.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::TempDir;

/// A stack with both label forms, a Traefik v1 service, a Traefik v2 service and an
/// unlabelled database; every label in it is valid.
const GOOD: &str = r#"
services:
  shop:
    image: example/shop
    expose: ["8080"]
    deploy:
      labels:
        wharf.enable: "true"
        wharf.host: shop.example.org
        wharf.sticky: cookie
        wharf.healthcheck.path: /health
  api:
    image: example/api
    ports: ["9000:80"]
    labels:
      - "wharf.enable=true"
      - "wharf.host=api.example.org"
      - "wharf.routes.v2.path=/v2"
  legacy:
    image: example/legacy
    deploy:
      labels:
        - traefik.enable=true
        - traefik.backend=test
        - traefik.frontend.rule=Host:saas.example.org
        - traefik.port=80
  modern:
    image: example/modern
    expose: [3000]
    labels:
      traefik.enable: "true"
      traefik.http.routers.modern.rule: Host(`modern.example.org`) && PathPrefix(`/app`)
      traefik.http.routers.modern.tls.certresolver: le
      traefik.http.services.modern.loadbalancer.server.port: "3000"
  db:
    image: postgres
"#;

fn wharf(dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_wharf"));
    // Hermetic: no config from the environment, an empty config file of our own.
    c.env_remove("WHARF_CONFIG").current_dir(dir);
    c
}

fn write(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let p = dir.0.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn check(dir: &TempDir, config: Option<&str>, files: &[&Path]) -> (Option<i32>, String) {
    let mut c = wharf(&dir.0);
    c.arg("check");
    if let Some(text) = config {
        c.arg("--config").arg(write(dir, "wharf.toml", text));
    }
    c.arg("--compose").args(files);
    let out: Output = c.output().unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

#[test]
fn a_good_stack_passes() {
    let dir = TempDir::new("check-good");
    let f = write(&dir, "stack.yml", GOOD);
    let (code, text) = check(&dir, Some(""), &[&f]);
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("error:"), "{text}");
    // shop, api, api/v2, legacy, modern.
    assert!(
        text.contains("ok: 5 compose service(s), 5 labelled route(s)"),
        "{text}"
    );
}

#[test]
fn without_config_the_built_in_defaults_apply() {
    let dir = TempDir::new("check-noconfig");
    let f = write(&dir, "stack.yml", GOOD);
    let (code, text) = check(&dir, None, &[&f]);
    // Like `wharf run`, check uses /etc/wharf/wharf.toml when it exists; the
    // compose file is checked either way.
    assert!(text.contains("labelled route(s)"), "{text}");
    if !Path::new("/etc/wharf/wharf.toml").exists() {
        assert_eq!(code, Some(0), "{text}");
        assert!(text.contains("5 labelled route(s)"), "{text}");
    }
}

#[test]
fn a_typo_fails_with_the_service_label_and_a_hint() {
    let dir = TempDir::new("check-typo");
    let f = write(
        &dir,
        "stack.yml",
        "services:\n  shop:\n    expose: [80]\n    deploy:\n      labels:\n        - wharf.enable=true\n        - wharf.host=shop.example.org\n        - wharf.helthcheck.path=/health\n",
    );
    let (code, text) = check(&dir, Some(""), &[&f]);
    assert_eq!(code, Some(1), "{text}");
    let line = text
        .lines()
        .find(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in {text}"));
    assert!(line.contains("stack.yml"), "{line}");
    assert!(line.contains("service shop"), "{line}");
    assert!(line.contains("wharf.helthcheck.path=\"/health\""), "{line}");
    assert!(
        line.contains("did you mean `wharf.healthcheck.path`?"),
        "{line}"
    );
}

#[test]
fn warnings_alone_exit_zero() {
    let dir = TempDir::new("check-warn");
    let f = write(
        &dir,
        "stack.yml",
        "services:\n  t:\n    expose: [80]\n    labels:\n      traefik.enable: \"true\"\n      traefik.http.routers.t.rule: Host(`t.example.org`)\n      traefik.http.routers.t.priority: \"10\"\n",
    );
    let (code, text) = check(&dir, Some(""), &[&f]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: ") && text.contains("traefik.http.routers.t.priority"),
        "{text}"
    );
}

#[test]
fn bad_traefik_rule_and_duplicate_host_across_files() {
    let dir = TempDir::new("check-dup");
    let a = write(&dir, "a.yml", GOOD);
    let b = write(
        &dir,
        "b.yml",
        "services:\n  copy:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: shop.example.org}\n  re:\n    expose: [80]\n    labels:\n      traefik.enable: \"true\"\n      traefik.http.routers.re.rule: HostRegexp(`{x:.+}`)\n",
    );
    let (code, text) = check(&dir, Some(""), &[&a, &b]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("service copy") && text.contains("already claimed by service shop"),
        "{text}"
    );
    assert!(
        text.contains("service re") && text.contains("`HostRegexp` matcher is not supported"),
        "{text}"
    );
}

#[test]
fn config_options_change_how_labels_read() {
    let dir = TempDir::new("check-opts");
    let f = write(&dir, "stack.yml", GOOD);
    // Traefik labels off: legacy and modern are not routed (and not errors).
    let (code, text) = check(&dir, Some("[docker]\ntraefik_labels = false\n"), &[&f]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("3 labelled route(s)"), "{text}");
    // Exposed by default: the database has no host, which is only a warning.
    let (code, text) = check(&dir, Some("[docker]\nexposed_by_default = true\n"), &[&f]);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning: ") && text.contains("service db"),
        "{text}"
    );
    // A broken config fails the check but the compose file is still checked.
    let (code, text) = check(&dir, Some("[docker]\nexposed_by_default = 3\n"), &[&f]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("error: ") && text.contains("wharf.toml:2:"),
        "{text}"
    );
    assert!(text.contains("5 labelled route(s)"), "{text}");
}

#[test]
fn yaml_errors_and_missing_files() {
    let dir = TempDir::new("check-yaml");
    let f = write(&dir, "broken.yml", "services:\n  a:\n    labels: [\n");
    let (code, text) = check(&dir, Some(""), &[&f]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("error: ") && text.contains("broken.yml:4:"),
        "{text}"
    );
    let missing = dir.0.join("nope.yml");
    let (code, text) = check(&dir, Some(""), &[&missing]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("nope.yml: cannot read"), "{text}");
}

/// Host ownership (docs/discovery.md): another file's service may take no path
/// under a host an earlier file holds, `*` is refused without
/// `allow_wildcards`, and hosts outside `allowed_domains` are refused, each as an
/// error naming the service and label.
#[test]
fn ownership_refusals_are_errors() {
    let dir = TempDir::new("check-owners");
    let a = write(
        &dir,
        "a.yml",
        "services:\n  shop:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: shop.example.org}\n",
    );
    let b = write(
        &dir,
        "b.yml",
        "services:\n  login:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: shop.example.org, wharf.path: /login}\n  star:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: \"*\"}\n  out:\n    expose: [80]\n    labels: {wharf.enable: true, wharf.host: bank.test}\n",
    );
    let cfg = "[docker]\nallowed_domains = [\"example.org\", \"*.example.org\"]\n";
    let (code, text) = check(&dir, Some(cfg), &[&a, &b]);
    assert_eq!(code, Some(1), "{text}");
    let line = |service: &str, needle: &str| {
        text.lines().any(|l| {
            l.starts_with("error:")
                && l.contains(&format!("service {service}"))
                && l.contains(needle)
        })
    };
    assert!(line("login", "belongs to"), "{text}");
    assert!(line("star", "allow_wildcards"), "{text}");
    assert!(line("out", "allowed_domains"), "{text}");
    assert!(!line("shop", ""), "{text}");
    // A bad pattern is an error on its key.
    let (code, text) = check(
        &dir,
        Some("[docker]\nallowed_domains = [\"exa mple.org\"]\n"),
        &[&a],
    );
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("docker.allowed_domains[0]"), "{text}");
}
