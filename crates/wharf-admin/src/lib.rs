//! The admin listener: `/ping`, `/metrics`, `/api/routes`, `/api/certificates`,
//! `/api/errors` and a
//! read-only dashboard at `/`. It reads the same published table as the proxy and
//! never changes anything.

use std::convert::Infallible;
use std::sync::Arc;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use prometheus::{Encoder, TextEncoder};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use wharf_table::Table;

/// A current configuration problem (SPEC `/api/errors`).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ConfigProblem {
    /// Which provider reported it (`file`, `docker`, ...).
    pub source: String,
    /// The service or route it concerns, if any.
    pub service: Option<String>,
    /// The key or label it concerns, if any.
    pub label: Option<String>,
    pub message: String,
}

/// What the admin listener reads.
#[derive(Clone)]
pub struct AdminState {
    pub table: Arc<ArcSwap<Table>>,
    pub problems: Arc<ArcSwap<Vec<ConfigProblem>>>,
    pub registry: prometheus::Registry,
    pub certificates: Arc<wharf_tls::CertStore>,
}

#[derive(Serialize)]
struct CertView {
    names: Vec<String>,
    issuer: String,
    /// RFC 3339, UTC.
    not_after: String,
    not_after_unix: i64,
    /// valid | expired | pending | renewing | failed
    state: &'static str,
    /// Why, when `failed`.
    reason: Option<String>,
    /// file | acme | self_signed | default
    source: &'static str,
    /// The certificate file, for `file`.
    file: Option<String>,
}

fn certificates_json(store: &wharf_tls::CertStore) -> Vec<u8> {
    let list: Vec<CertView> = store
        .certificates()
        .into_iter()
        .map(|c| CertView {
            not_after: rfc3339(c.not_after),
            not_after_unix: c.not_after,
            state: c.state.as_str(),
            reason: match &c.state {
                wharf_tls::CertState::Failed(r) => Some(r.clone()),
                _ => None,
            },
            source: c.source.as_str(),
            file: match &c.source {
                wharf_tls::CertSource::File { cert, .. } => Some(cert.display().to_string()),
                _ => None,
            },
            names: c.names,
            issuer: c.issuer,
        })
        .collect();
    serde_json::to_vec_pretty(&list).unwrap_or_default()
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (proleptic Gregorian, UTC), using the
/// days-to-civil conversion from Howard Hinnant's "chrono-compatible low-level
/// date algorithms".
fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[derive(Serialize)]
struct RouteView<'a> {
    name: &'a str,
    source: &'a str,
    hosts: &'a [String],
    path: &'a str,
    balance: &'static str,
    sticky: &'static str,
    tls: &'static str,
    backends: Vec<BackendView>,
}

#[derive(Serialize)]
struct BackendView {
    address: String,
    scheme: &'static str,
    health: &'static str,
    inflight: u32,
}

fn routes_json(table: &Table) -> Vec<u8> {
    let routes: Vec<RouteView<'_>> = table
        .routes()
        .iter()
        .map(|r| RouteView {
            name: &r.name,
            source: &r.source,
            hosts: &r.hosts,
            path: &r.path,
            balance: r.balance().as_str(),
            sticky: r.policy.sticky.as_str(),
            tls: if r.policy.tls { "acme" } else { "none" },
            backends: r
                .backends
                .all()
                .iter()
                .map(|b| BackendView {
                    address: b.addr.to_string(),
                    scheme: b.scheme.as_str(),
                    health: b.health(),
                    inflight: b.state.inflight(),
                })
                .collect(),
        })
        .collect();
    serde_json::to_vec_pretty(&routes).unwrap_or_default()
}

const DASHBOARD: &str = include_str!("dashboard.html");

fn respond(status: StatusCode, content_type: &'static str, body: Vec<u8>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn handle(state: &AdminState, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            b"the admin listener is read-only\n".to_vec(),
        );
    }
    const JSON: &str = "application/json";
    match req.uri().path() {
        "/ping" => respond(StatusCode::OK, "text/plain; charset=utf-8", b"OK".to_vec()),
        "/metrics" => {
            let mut buf = Vec::new();
            let enc = TextEncoder::new();
            match enc.encode(&state.registry.gather(), &mut buf) {
                Ok(()) => respond(StatusCode::OK, "text/plain; version=0.0.4", buf),
                Err(e) => respond(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "text/plain; charset=utf-8",
                    e.to_string().into_bytes(),
                ),
            }
        }
        "/api/routes" => respond(StatusCode::OK, JSON, routes_json(&state.table.load())),
        "/api/certificates" => {
            respond(StatusCode::OK, JSON, certificates_json(&state.certificates))
        }
        "/api/errors" => respond(
            StatusCode::OK,
            JSON,
            serde_json::to_vec_pretty(&**state.problems.load()).unwrap_or_default(),
        ),
        "/" => respond(
            StatusCode::OK,
            "text/html; charset=utf-8",
            DASHBOARD.as_bytes().to_vec(),
        ),
        _ => respond(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            b"404 not found\n".to_vec(),
        ),
    }
}

/// Serves the admin listener until `cancel`.
pub async fn serve(listener: TcpListener, state: AdminState, cancel: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(10));
    let builder = Arc::new(builder);
    loop {
        let (stream, peer) = tokio::select! {
            _ = cancel.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let state = state.clone();
        let builder = builder.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| {
                let r = handle(&state, &req);
                async move { Ok::<_, Infallible>(r) }
            });
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            let res = tokio::select! {
                r = conn.as_mut() => r,
                _ = cancel.cancelled() => { conn.as_mut().graceful_shutdown(); conn.await }
            };
            if let Err(e) = res {
                debug!(%peer, error = %e, "admin connection error");
            }
        });
    }
}

/// `wharf_backend_up{route,backend}` and `wharf_backend_inflight{route,backend}`,
/// read from the published table at scrape time, so the request path pays nothing
/// for them.
pub struct BackendCollector {
    table: Arc<ArcSwap<Table>>,
    descs: Vec<prometheus::core::Desc>,
}

const BACKEND_LABELS: [&str; 2] = ["route", "backend"];

impl BackendCollector {
    pub fn new(table: Arc<ArcSwap<Table>>) -> prometheus::Result<Self> {
        use prometheus::core::Describer as _;
        let up = prometheus::Opts::new("wharf_backend_up", "1 when the backend takes requests.")
            .variable_labels(BACKEND_LABELS.iter().map(|s| s.to_string()).collect());
        let inflight = prometheus::Opts::new(
            "wharf_backend_inflight",
            "Requests in flight to the backend (until the response body ends).",
        )
        .variable_labels(BACKEND_LABELS.iter().map(|s| s.to_string()).collect());
        Ok(BackendCollector {
            table,
            descs: vec![up.describe()?, inflight.describe()?],
        })
    }

    fn gauges(&self) -> prometheus::Result<[prometheus::IntGaugeVec; 2]> {
        let up = prometheus::IntGaugeVec::new(
            prometheus::Opts::new("wharf_backend_up", "1 when the backend takes requests."),
            &BACKEND_LABELS,
        )?;
        let inflight = prometheus::IntGaugeVec::new(
            prometheus::Opts::new(
                "wharf_backend_inflight",
                "Requests in flight to the backend (until the response body ends).",
            ),
            &BACKEND_LABELS,
        )?;
        let table = self.table.load();
        for route in table.routes() {
            for b in route.backends.all() {
                let addr = b.addr.to_string();
                let labels = [&*route.name, addr.as_str()];
                up.with_label_values(&labels).set(i64::from(b.usable()));
                inflight
                    .with_label_values(&labels)
                    .set(i64::from(b.state.inflight()));
            }
        }
        Ok([up, inflight])
    }
}

impl prometheus::core::Collector for BackendCollector {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        match self.gauges() {
            Ok([up, inflight]) => {
                let mut out = up.collect();
                out.extend(inflight.collect());
                out
            }
            Err(e) => {
                warn!(error = %e, "backend metrics unavailable");
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::rfc3339;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_798_761_599), "2026-12-31T23:59:59Z");
        assert_eq!(rfc3339(-1), "1969-12-31T23:59:59Z");
    }
}
