//! `wharf_tls_cert_not_after_seconds{name}`: the expiry of the certificate served
//! for each name, read from the certificate store at scrape time, so file
//! certificates count as much as ACME ones and a replaced certificate's value
//! changes with it. Placeholders (the default certificate, self-signed ones
//! served while an order runs) are left out: their expiry means nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use prometheus::core::{Collector, Desc, Describer as _};
use prometheus::proto::{Gauge, LabelPair, Metric, MetricFamily, MetricType};
use wharf_tls::{CertSource, CertStore};

const NAME: &str = "wharf_tls_cert_not_after_seconds";
const HELP: &str =
    "Expiry (unix seconds) of the certificate served for each name (ACME and file certificates).";

pub struct CertCollector {
    store: Arc<CertStore>,
    desc: Desc,
}

impl CertCollector {
    pub fn new(store: Arc<CertStore>) -> prometheus::Result<Self> {
        let desc = prometheus::Opts::new(NAME, HELP)
            .variable_labels(vec!["name".to_string()])
            .describe()?;
        Ok(CertCollector { store, desc })
    }

    /// Name → latest expiry among the real certificates covering it.
    fn expiries(&self) -> BTreeMap<String, i64> {
        let mut out: BTreeMap<String, i64> = BTreeMap::new();
        for c in self.store.certificates() {
            if !matches!(c.source, CertSource::File { .. } | CertSource::Acme) {
                continue;
            }
            for n in c.names {
                let e = out.entry(n).or_insert(c.not_after);
                *e = (*e).max(c.not_after);
            }
        }
        out
    }
}

impl Collector for CertCollector {
    fn desc(&self) -> Vec<&Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let metrics: Vec<Metric> = self
            .expiries()
            .into_iter()
            .map(|(name, not_after)| {
                let mut l = LabelPair::default();
                l.set_name("name".to_string());
                l.set_value(name);
                let mut g = Gauge::default();
                g.set_value(not_after as f64);
                let mut m = Metric::default();
                m.set_label(vec![l]);
                m.set_gauge(g);
                m
            })
            .collect();
        if metrics.is_empty() {
            return Vec::new();
        }
        let mut f = MetricFamily::default();
        f.set_name(NAME.to_string());
        f.set_help(HELP.to_string());
        f.set_field_type(MetricType::GAUGE);
        f.set_metric(metrics);
        vec![f]
    }
}
