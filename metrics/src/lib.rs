//! Prometheus metrics of one brindle process: a registry of labelled counters, gauges and
//! histograms, values refreshed when scraped, the HTTP endpoint serving them at `/metrics` with the
//! process's readiness at `/healthz` (probes that cannot speak mTLS use it), and a tower layer that
//! counts and times every gRPC call a server answers.

mod grpc_layer;
mod http;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

pub use grpc_layer::GrpcMetricsLayer;
pub use http::{MetricsError, serve};

/// Label names and values of one series.
pub type Labels = Vec<(&'static str, String)>;

/// Counters by labels.
pub type Counters = Family<Labels, Counter>;
/// Gauges by labels.
pub type Gauges = Family<Labels, Gauge>;
/// Histograms by labels.
pub type Histograms = Family<Labels, Histogram, Buckets>;

/// Buckets (seconds) for latencies from half a millisecond to ten seconds.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Builds the histograms of a family with fixed bucket bounds.
#[derive(Debug, Clone, Copy)]
pub struct Buckets(pub &'static [f64]);

impl MetricConstructor<Histogram> for Buckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(self.0.iter().copied())
    }
}

type Refresh = Box<dyn Fn() + Send + Sync>;

struct Inner {
    registry: Mutex<Registry>,
    refreshers: Mutex<Vec<Refresh>>,
    ready: AtomicBool,
}

/// A process's metrics. Cloning shares them.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// An empty registry; every series name gets the `brindle_` prefix.
    pub fn new() -> Self {
        Self {
            inner: Arc::new(Inner {
                registry: Mutex::new(Registry::with_prefix("brindle")),
                refreshers: Mutex::new(Vec::new()),
                ready: AtomicBool::new(false),
            }),
        }
    }

    fn registry(&self) -> MutexGuard<'_, Registry> {
        self.inner.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a counter family (exposed as `brindle_<name>_total`).
    pub fn counters(&self, name: &str, help: &str) -> Counters {
        let family = Counters::default();
        self.registry().register(name, help, family.clone());
        family
    }

    /// Registers a gauge family.
    pub fn gauges(&self, name: &str, help: &str) -> Gauges {
        let family = Gauges::default();
        self.registry().register(name, help, family.clone());
        family
    }

    /// Registers a histogram family with `buckets` as upper bounds.
    pub fn histograms(&self, name: &str, help: &str, buckets: &'static [f64]) -> Histograms {
        let family = Histograms::new_with_constructor(Buckets(buckets));
        self.registry().register(name, help, family.clone());
        family
    }

    /// Runs `refresh` before every scrape (to set gauges from current state).
    pub fn on_scrape(&self, refresh: impl Fn() + Send + Sync + 'static) {
        self.inner
            .refreshers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Box::new(refresh));
    }

    /// Sets what `/healthz` answers: ready (200) or not (503). Not ready until first set.
    pub fn set_ready(&self, ready: bool) {
        self.inner.ready.store(ready, Ordering::Relaxed);
    }

    /// Whether the process reported itself ready.
    pub fn ready(&self) -> bool {
        self.inner.ready.load(Ordering::Relaxed)
    }

    /// The current values in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        for refresh in self
            .inner
            .refreshers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
        {
            refresh();
        }
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry());
        text
    }
}

/// A histogram family registered nowhere: what a component records into when it runs without
/// metrics (counter and gauge families registered nowhere are their `Default`).
pub fn unregistered_histograms(buckets: &'static [f64]) -> Histograms {
    Histograms::new_with_constructor(Buckets(buckets))
}

/// Labels from pairs.
pub fn labels<const N: usize>(pairs: [(&'static str, &str); N]) -> Labels {
    pairs.into_iter().map(|(k, v)| (k, v.to_owned())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_are_prefixed_labelled_and_refreshed_on_scrape() {
        let metrics = Metrics::new();
        let calls = metrics.counters("cni_requests", "CNI requests");
        calls.get_or_create(&labels([("command", "ADD")])).inc();
        let latency = metrics.histograms("cni_duration_seconds", "CNI latency", LATENCY_BUCKETS);
        latency
            .get_or_create(&labels([("command", "ADD")]))
            .observe(0.003);
        let subscribers = metrics.gauges("subscribers", "subscribers");
        let source = Arc::new(std::sync::atomic::AtomicI64::new(7));
        let read = Arc::clone(&source);
        let gauge = subscribers.clone();
        metrics.on_scrape(move || {
            gauge
                .get_or_create(&Labels::new())
                .set(read.load(std::sync::atomic::Ordering::Relaxed));
        });
        let text = metrics.encode();
        assert!(
            text.contains("brindle_cni_requests_total{command=\"ADD\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("brindle_cni_duration_seconds_bucket{le=\"0.005\",command=\"ADD\"} 1"),
            "{text}"
        );
        assert!(text.contains("brindle_subscribers{} 7"), "{text}");
        source.store(9, std::sync::atomic::Ordering::Relaxed);
        assert!(metrics.encode().contains("brindle_subscribers{} 9"));
    }
}
