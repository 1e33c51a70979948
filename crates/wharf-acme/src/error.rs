/// Everything that can go wrong while obtaining or storing a certificate.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    #[error("`{name}`: {reason}")]
    InvalidName { name: String, reason: String },
    #[error("no ACME email configured; no certificate is ordered")]
    NoEmail,
    #[error("ACME server: {0}")]
    Acme(String),
    #[error("challenge for `{name}`: {reason}")]
    Challenge { name: String, reason: String },
    #[error("DNS update: {0}")]
    Dns(String),
    #[error("storage: {0}")]
    Storage(String),
    #[error("corrupt stored entry `{entry}`: {reason}")]
    Corrupt { entry: String, reason: String },
    #[error("certificate: {0}")]
    Certificate(String),
    #[error("config: {0}")]
    Config(String),
}

impl From<instant_acme::Error> for AcmeError {
    fn from(e: instant_acme::Error) -> Self {
        AcmeError::Acme(e.to_string())
    }
}

impl From<std::io::Error> for AcmeError {
    fn from(e: std::io::Error) -> Self {
        AcmeError::Storage(e.to_string())
    }
}
