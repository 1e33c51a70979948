//! Connecting to the Engine API: a unix socket or plain TCP (a read-only socket
//! proxy such as tecnativa/docker-socket-proxy listens on TCP).

use bollard::{Docker, API_DEFAULT_VERSION};

/// Seconds a single API call may take before it counts as a failure.
const CALL_TIMEOUT_SECS: u64 = 20;

/// The endpoint to use: `DOCKER_HOST` when it is set and not empty (as the docker
/// CLI does), else the configured one.
pub fn endpoint_from_env(configured: &str) -> String {
    match std::env::var("DOCKER_HOST") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_string(),
        _ => configured.to_string(),
    }
}

/// Opens a client for `endpoint` and agrees on an API version with the daemon
/// (an older Engine answers with its own, lower version).
pub async fn connect(endpoint: &str) -> Result<Docker, String> {
    let docker = if let Some(path) = endpoint.strip_prefix("unix://") {
        Docker::connect_with_socket(path, CALL_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else if let Some(addr) = endpoint
        .strip_prefix("tcp://")
        .or_else(|| endpoint.strip_prefix("http://"))
    {
        Docker::connect_with_http(
            &format!("http://{addr}"),
            CALL_TIMEOUT_SECS,
            API_DEFAULT_VERSION,
        )
    } else if endpoint.starts_with('/') {
        Docker::connect_with_socket(endpoint, CALL_TIMEOUT_SECS, API_DEFAULT_VERSION)
    } else {
        return Err(format!(
            "`{endpoint}` is not a Docker endpoint; use unix:///path or tcp://host:port"
        ));
    }
    .map_err(|e| format!("{endpoint}: {e}"))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| format!("{endpoint}: {e}"))
}
