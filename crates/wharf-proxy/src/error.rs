//! Why a request could not be forwarded, and the one function that turns a cause
//! into a status (SPEC "Forwarding": 502/503/504/429/421/404).

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{Either, Full};

use crate::body::ProxyBody;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("missing or malformed Host")]
    BadHost,
    #[error("a path Wharf does not route (dot segment, encoded slash; docs/security.md)")]
    BadPath,
    #[error("no route for this host and path")]
    NoRoute,
    #[error("the host does not match the TLS server name")]
    Misdirected,
    #[error("no healthy backend")]
    NoHealthyBackend,
    #[error("every backend is at maxconn and the queue is full")]
    QueueFull,
    #[error("every backend stayed at maxconn for the queue timeout")]
    QueueTimeout,
    #[error("the client address is not in the route's allow-list")]
    Forbidden,
    /// Missing or wrong basic credentials; carries the route's challenge.
    #[error("missing or wrong credentials")]
    Unauthorized(HeaderValue),
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("backend scheme `{0}` is not supported by this build")]
    UnsupportedScheme(&'static str),
    #[error("could not connect to the backend: {0}")]
    Connect(String),
    #[error("the backend failed: {0}")]
    Upstream(String),
    #[error("the backend did not answer in time")]
    Timeout,
}

const TEXT: HeaderValue = HeaderValue::from_static("text/plain; charset=utf-8");

impl ProxyError {
    /// The status for a cause: the only place the mapping lives.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BadHost | ProxyError::BadPath => StatusCode::BAD_REQUEST,
            ProxyError::NoRoute => StatusCode::NOT_FOUND,
            ProxyError::Misdirected => StatusCode::MISDIRECTED_REQUEST,
            ProxyError::NoHealthyBackend | ProxyError::QueueFull | ProxyError::QueueTimeout => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ProxyError::Forbidden => StatusCode::FORBIDDEN,
            ProxyError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ProxyError::UnsupportedScheme(_) | ProxyError::Connect(_) | ProxyError::Upstream(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    /// A short plain body; it never reveals backend addresses.
    pub(crate) fn body(&self) -> &'static str {
        match self {
            ProxyError::BadHost => "400 Bad Request: missing or malformed Host\n",
            ProxyError::BadPath => "400 Bad Request: malformed path\n",
            ProxyError::NoRoute => "404 Not Found: no route for this host\n",
            ProxyError::Misdirected => "421 Misdirected Request\n",
            ProxyError::NoHealthyBackend => "503 Service Unavailable: no healthy backend\n",
            ProxyError::QueueFull | ProxyError::QueueTimeout => {
                "503 Service Unavailable: every backend is busy\n"
            }
            ProxyError::RateLimited { .. } => "429 Too Many Requests\n",
            ProxyError::Forbidden => "403 Forbidden\n",
            ProxyError::Unauthorized(_) => "401 Unauthorized\n",
            ProxyError::UnsupportedScheme(_) | ProxyError::Connect(_) | ProxyError::Upstream(_) => {
                "502 Bad Gateway\n"
            }
            ProxyError::Timeout => "504 Gateway Timeout\n",
        }
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from_static(
            self.body().as_bytes(),
        ))));
        *resp.status_mut() = self.status();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, TEXT);
        match self {
            // RFC 9110 §11.6.1: a 401 carries the challenge.
            ProxyError::Unauthorized(challenge) => {
                h.insert(header::WWW_AUTHENTICATE, challenge);
            }
            ProxyError::RateLimited { retry_after_secs } => {
                h.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry_after_secs.max(1)),
                );
            }
            // A service between tasks comes back soon: tell clients when to retry.
            // A full route frees up as requests finish.
            ProxyError::NoHealthyBackend | ProxyError::QueueFull | ProxyError::QueueTimeout => {
                h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses() {
        assert_eq!(ProxyError::NoRoute.status(), 404);
        assert_eq!(ProxyError::NoHealthyBackend.status(), 503);
        assert_eq!(ProxyError::Connect("x".into()).status(), 502);
        assert_eq!(ProxyError::Timeout.status(), 504);
        assert_eq!(ProxyError::Misdirected.status(), 421);
        let r = ProxyError::RateLimited {
            retry_after_secs: 3,
        }
        .into_response();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[header::RETRY_AFTER], "3");
    }
}
