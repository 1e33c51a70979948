//! `swarm` storage: Docker configs in the swarm's replicated store (see docs/acme.md).

use std::time::Duration;

use async_trait::async_trait;

use crate::store::{Store, StoredCert};
use crate::AcmeError;

pub struct SwarmStore {
    docker: bollard::Docker,
}

impl SwarmStore {
    /// Connect with `DOCKER_HOST` or the default socket.
    pub fn connect_default() -> Result<Self, AcmeError> {
        let docker = bollard::Docker::connect_with_defaults()
            .map_err(|e| AcmeError::Storage(format!("docker: {e}")))?;
        Ok(Self { docker })
    }

    pub fn new(docker: bollard::Docker) -> Self {
        Self { docker }
    }
}

fn todo_err() -> AcmeError {
    AcmeError::Storage("swarm storage is not implemented yet".into())
}

#[async_trait]
impl Store for SwarmStore {
    async fn load_account(&self, _directory: &str) -> Result<Option<String>, AcmeError> {
        let _ = &self.docker;
        Err(todo_err())
    }
    async fn save_account(&self, _d: &str, _j: &str) -> Result<(), AcmeError> {
        Err(todo_err())
    }
    async fn load_certs(&self) -> Result<Vec<Result<StoredCert, AcmeError>>, AcmeError> {
        Err(todo_err())
    }
    async fn load_cert(&self, _names: &[String]) -> Result<Option<StoredCert>, AcmeError> {
        Err(todo_err())
    }
    async fn save_cert(&self, _cert: &StoredCert) -> Result<(), AcmeError> {
        Err(todo_err())
    }
    async fn put_challenge(&self, _t: &str, _k: &str) -> Result<(), AcmeError> {
        Err(todo_err())
    }
    async fn get_challenge(&self, _t: &str) -> Result<Option<String>, AcmeError> {
        Err(todo_err())
    }
    async fn remove_challenge(&self, _t: &str) -> Result<(), AcmeError> {
        Err(todo_err())
    }
    async fn try_lock(&self, _id: &str, _h: &str, _l: Duration) -> Result<bool, AcmeError> {
        Err(todo_err())
    }
    async fn unlock(&self, _id: &str, _h: &str) -> Result<(), AcmeError> {
        Err(todo_err())
    }
}
