//! `wharf_acme_orders_total{result}` and `wharf_tls_cert_not_after_seconds{name}`.

use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};

#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) orders: IntCounterVec,
    pub(crate) not_after: IntGaugeVec,
}

impl Metrics {
    pub(crate) fn new() -> Self {
        // The names and labels are constants; these constructors only fail on invalid names.
        #[allow(clippy::expect_used)]
        Self {
            orders: IntCounterVec::new(
                Opts::new(
                    "wharf_acme_orders_total",
                    "ACME orders by result (ok, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            not_after: IntGaugeVec::new(
                Opts::new(
                    "wharf_tls_cert_not_after_seconds",
                    "Expiry (unix seconds) of the ACME certificate serving each name.",
                ),
                &["name"],
            )
            .expect("valid metric"),
        }
    }

    pub(crate) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.orders.clone()))?;
        registry.register(Box::new(self.not_after.clone()))
    }
}
