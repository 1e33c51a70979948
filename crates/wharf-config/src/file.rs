//! The file's raw shape: serde types that mirror the TOML exactly and refuse
//! unknown keys. Nothing here is validated; see `validate.rs`.

use std::collections::BTreeMap;

use serde::Deserialize;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    #[serde(default)]
    pub entrypoints: BTreeMap<String, FileEntrypoint>,
    pub admin: Option<FileAdmin>,
    pub runtime: Option<FileRuntime>,
    pub upstream: Option<FileUpstream>,
    pub tls: Option<FileTls>,
    pub acme: Option<FileAcme>,
    pub docker: Option<FileDocker>,
    pub dns: Option<FileDns>,
    pub sticky: Option<FileSticky>,
    pub log: Option<FileLog>,
    /// Routes stay loosely typed here: they are validated by the same key parser
    /// as labels (`route.rs`), which gives "did you mean" hints.
    #[serde(default)]
    pub routes: Vec<toml::Table>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntrypoint {
    pub address: Option<String>,
    pub tls: Option<bool>,
    pub redirect_https: Option<bool>,
    pub proxy_protocol: Option<FileProxyProtocol>,
    pub forwarded_trusted: Option<Vec<String>>,
    pub http2: Option<bool>,
    pub header_read_timeout: Option<String>,
    pub max_header_size: Option<usize>,
    pub max_headers: Option<usize>,
    pub max_connections: Option<usize>,
    pub idle_timeout: Option<String>,
    pub max_connection_age: Option<String>,
    pub client_timeout: Option<String>,
    pub tunnel_timeout: Option<String>,
    pub strict_sni: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileProxyProtocol {
    #[serde(default)]
    pub trusted: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAdmin {
    pub address: Option<String>,
    pub token: Option<String>,
    pub token_file: Option<String>,
    pub hosts: Option<Vec<String>>,
    pub header_read_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRuntime {
    pub worker_threads: Option<usize>,
    pub shutdown_timeout: Option<String>,
    pub accept_grace: Option<String>,
    pub max_connections: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileUpstream {
    pub connect_timeout: Option<String>,
    pub response_timeout: Option<String>,
    pub idle_timeout: Option<String>,
    pub max_idle_per_backend: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    #[serde(default)]
    pub certificates: Vec<FileCertificate>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileCertificate {
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcme {
    pub email: Option<String>,
    pub directory: Option<String>,
    pub challenge: Option<String>,
    pub ca_roots: Option<Vec<String>>,
    pub storage: Option<String>,
    pub dns: Option<FileAcmeDns>,
    pub max_names: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAcmeDns {
    pub server: Option<String>,
    pub zone: Option<String>,
    pub key_name: Option<String>,
    pub key_secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDocker {
    pub endpoint: Option<String>,
    pub mode: Option<String>,
    pub network: Option<String>,
    pub exposed_by_default: Option<bool>,
    pub traefik_labels: Option<bool>,
    pub poll_interval: Option<String>,
    pub allowed_domains: Option<Vec<String>>,
    pub allow_wildcards: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileDns {
    pub nameservers: Option<Vec<String>>,
    pub refresh: Option<String>,
    pub hold_valid: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSticky {
    pub secret: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLog {
    pub access: Option<String>,
    pub access_file: Option<String>,
}

/// Kinds of scalar keys, so environment overrides are typed by the schema rather
/// than guessed from the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Str,
    Bool,
    Int,
    List,
}

/// Every scalar key of the fixed sections, for `WHARF_<SECTION>_<KEY>`.
pub const SECTION_KEYS: &[(&str, &str, Kind)] = &[
    ("admin", "address", Kind::Str),
    ("admin", "token", Kind::Str),
    ("admin", "token_file", Kind::Str),
    ("admin", "hosts", Kind::List),
    ("admin", "header_read_timeout", Kind::Str),
    ("admin", "idle_timeout", Kind::Str),
    ("admin", "max_connections", Kind::Int),
    ("runtime", "worker_threads", Kind::Int),
    ("runtime", "shutdown_timeout", Kind::Str),
    ("runtime", "accept_grace", Kind::Str),
    ("runtime", "max_connections", Kind::Int),
    ("upstream", "connect_timeout", Kind::Str),
    ("upstream", "response_timeout", Kind::Str),
    ("upstream", "idle_timeout", Kind::Str),
    ("upstream", "max_idle_per_backend", Kind::Int),
    ("acme", "email", Kind::Str),
    ("acme", "directory", Kind::Str),
    ("acme", "challenge", Kind::Str),
    ("acme", "ca_roots", Kind::List),
    ("acme", "storage", Kind::Str),
    ("acme", "max_names", Kind::Int),
    ("acme.dns", "server", Kind::Str),
    ("acme.dns", "zone", Kind::Str),
    ("acme.dns", "key_name", Kind::Str),
    ("acme.dns", "key_secret", Kind::Str),
    ("docker", "endpoint", Kind::Str),
    ("docker", "mode", Kind::Str),
    ("docker", "network", Kind::Str),
    ("docker", "exposed_by_default", Kind::Bool),
    ("docker", "traefik_labels", Kind::Bool),
    ("docker", "poll_interval", Kind::Str),
    ("docker", "allowed_domains", Kind::List),
    ("docker", "allow_wildcards", Kind::Bool),
    ("dns", "nameservers", Kind::List),
    ("dns", "refresh", Kind::Str),
    ("dns", "hold_valid", Kind::Str),
    ("sticky", "secret", Kind::Str),
    ("log", "access", Kind::Str),
    ("log", "access_file", Kind::Str),
];

/// Every scalar key of an entrypoint (`WHARF_ENTRYPOINTS_<NAME>_<KEY>`).
pub const ENTRYPOINT_KEYS: &[(&str, Kind)] = &[
    ("address", Kind::Str),
    ("tls", Kind::Bool),
    ("redirect_https", Kind::Bool),
    ("proxy_protocol.trusted", Kind::List),
    ("forwarded_trusted", Kind::List),
    ("http2", Kind::Bool),
    ("header_read_timeout", Kind::Str),
    ("max_header_size", Kind::Int),
    ("max_headers", Kind::Int),
    ("max_connections", Kind::Int),
    ("idle_timeout", Kind::Str),
    ("max_connection_age", Kind::Str),
    ("client_timeout", Kind::Str),
    ("tunnel_timeout", Kind::Str),
    ("strict_sni", Kind::Bool),
];
