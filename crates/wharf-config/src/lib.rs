//! Wharf's configuration: the TOML file (raw serde types in [`file`]), environment
//! overrides ([`env`]), and validation into a [`Config`] that the rest of Wharf can
//! trust. Route keys are parsed by [`route`], which labels share: [`labels`] turns one
//! service's `wharf.*` (and, through [`traefik`], `traefik.*`) labels into routes, and
//! [`compose`] reads compose files for `wharf check --compose`.
//!
//! Nothing here binds a port or touches the network: a config is validated whole
//! before anything starts, and a config that fails changes nothing.

pub mod compose;
pub mod env;
pub mod file;
pub mod labels;
pub mod route;
pub mod traefik;
mod validate;
pub mod values;

pub use labels::{
    service_routes, LabelOptions, LabelProblem, ServiceInput, ServiceRoutes, Severity,
};
pub use route::{BackendTls, RateKey, RateScope, RouteSpec, Upstream};
pub use validate::{AccessLogFormat, LogConfig};
pub use validate::{
    AcmeConfig, AcmeDns, AdminConfig, AdminToken, CertPaths, Challenge, Config, DnsConfig,
    DockerConfig, DockerMode, Entrypoint, RuntimeConfig, StickyConfig, Storage, UpstreamConfig,
};

use std::fmt;
use std::path::Path;

/// One problem, located as precisely as the file allows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `entrypoints.web.address` or `routes[2].host`.
    pub key: String,
    /// 1-based line in the file, when the key is in the file (not from the
    /// environment or a default).
    pub line: Option<usize>,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: cannot read the config file: {source}")]
    Read {
        origin: String,
        source: std::io::Error,
    },
    #[error("{}", render(.origin, .problems))]
    Invalid {
        origin: String,
        problems: Vec<Problem>,
    },
}

fn render(origin: &str, problems: &[Problem]) -> String {
    let mut out = String::new();
    for (i, p) in problems.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        match p.line {
            Some(line) => out.push_str(&format!("{origin}:{line}: {}: {}", p.key, p.message)),
            None => out.push_str(&format!("{origin}: {}: {}", p.key, p.message)),
        }
    }
    out
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Reads and validates a config file, applying `WHARF_*` overrides from `vars`.
pub fn load(
    path: &Path,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        origin: origin.clone(),
        source,
    })?;
    let mut cfg = parse(&text, &origin, vars)?;
    cfg.source = Some(path.to_path_buf());
    Ok(cfg)
}

/// Validates config text; `origin` names it in messages. An empty text gives the
/// built-in defaults (plus overrides).
pub fn parse(
    text: &str,
    origin: &str,
    vars: impl IntoIterator<Item = (String, String)>,
) -> Result<Config, ConfigError> {
    validate::parse(text, origin, vars)
}
