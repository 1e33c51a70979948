//! `wharf_acme_orders_total{result}` (`wharf_tls_cert_not_after_seconds` comes
//! from the certificate store, for every certificate served).

use prometheus::{IntCounterVec, Opts, Registry};

#[derive(Clone)]
pub(crate) struct Metrics {
    pub(crate) orders: IntCounterVec,
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
        }
    }

    pub(crate) fn register(&self, registry: &Registry) -> Result<(), prometheus::Error> {
        registry.register(Box::new(self.orders.clone()))
    }
}
