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
        AcmeError::Acme(with_sources(&e))
    }
}

/// The message with its causes: hyper's client error alone says only
/// "client error (Connect)", the cause says "Connection refused".
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

impl From<std::io::Error> for AcmeError {
    fn from(e: std::io::Error) -> Self {
        AcmeError::Storage(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::AcmeError;

    /// Like hyper's client error: the message hides its cause.
    #[derive(Debug)]
    struct Terse(std::io::Error);

    impl std::fmt::Display for Terse {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error (Connect)")
        }
    }

    impl std::error::Error for Terse {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn causes_are_in_the_message() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "connection refused");
        let e = instant_acme::Error::Other(Box::new(Terse(io)));
        let AcmeError::Acme(m) = AcmeError::from(e) else {
            panic!("not an ACME error");
        };
        assert_eq!(m, "client error (Connect): connection refused");
    }
}
