//! The HTTPS client instant-acme talks through: platform roots plus `[acme] ca_roots`, and a note
//! of the CA's `Retry-After` on error responses for the order that made the request.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use instant_acme::{BodyWrapper, BytesResponse, HttpClient};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::AcmeError;

pub(crate) type RetrySlot = Arc<Mutex<Option<SystemTime>>>;

tokio::task_local! {
    /// Set around each order so that the client can report the CA's `Retry-After` to it.
    pub(crate) static RETRY_AFTER: RetrySlot;
}

type Inner = Client<hyper_rustls::HttpsConnector<HttpConnector>, BodyWrapper<Bytes>>;

pub(crate) struct AcmeHttp {
    inner: Inner,
}

impl AcmeHttp {
    /// Trust the platform's roots plus every certificate in the `ca_roots` PEM files.
    pub(crate) fn new(ca_roots: &[std::path::PathBuf]) -> Result<Self, AcmeError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for c in native.certs {
            let _ = roots.add(c);
        }
        for path in ca_roots {
            let mut n = 0;
            for c in CertificateDer::pem_file_iter(path)
                .map_err(|e| AcmeError::Config(format!("ca_roots `{}`: {e}", path.display())))?
            {
                let c = c.map_err(|e| {
                    AcmeError::Config(format!("ca_roots `{}`: {e}", path.display()))
                })?;
                roots.add(c).map_err(|e| {
                    AcmeError::Config(format!("ca_roots `{}`: {e}", path.display()))
                })?;
                n += 1;
            }
            if n == 0 {
                return Err(AcmeError::Config(format!(
                    "ca_roots `{}`: no certificate in file",
                    path.display()
                )));
            }
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AcmeError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let mut http = HttpConnector::new();
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_only()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Ok(Self {
            inner: Client::builder(TokioExecutor::new()).build(https),
        })
    }
}

impl HttpClient for AcmeHttp {
    fn request(
        &self,
        req: http::Request<BodyWrapper<Bytes>>,
    ) -> Pin<Box<dyn Future<Output = Result<BytesResponse, instant_acme::Error>> + Send>> {
        let slot = RETRY_AFTER.try_with(|s| s.clone()).ok();
        let fut = HttpClient::request(&self.inner, req);
        Box::pin(async move {
            let rsp = tokio::time::timeout(Duration::from_secs(30), fut)
                .await
                .map_err(|_| instant_acme::Error::Str("ACME server did not answer in 30s"))??;
            if let Some(slot) = slot {
                if rsp.parts.status.as_u16() >= 400 {
                    if let Some(at) = rsp
                        .parts
                        .headers
                        .get(http::header::RETRY_AFTER)
                        .and_then(|v| v.to_str().ok())
                        .and_then(parse_retry_after)
                    {
                        if let Ok(mut g) = slot.lock() {
                            *g = Some(at);
                        }
                    }
                }
            }
            Ok(rsp)
        })
    }
}

/// RFC 9110 §10.2.3: delay-seconds or an HTTP-date.
pub(crate) fn parse_retry_after(v: &str) -> Option<SystemTime> {
    let v = v.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(SystemTime::now() + Duration::from_secs(secs));
    }
    httpdate::parse_http_date(v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::now();
        let t = parse_retry_after("120").unwrap();
        assert!(t >= now + Duration::from_secs(119));
        let t = parse_retry_after("Fri, 31 Dec 2049 23:59:59 GMT").unwrap();
        assert!(t > now);
        assert!(parse_retry_after("soon").is_none());
    }
}
