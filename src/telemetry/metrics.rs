//! Prometheus metrics of the HTTP face and the executor, rendered as text for `GET /metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram};
use prometheus_client::registry::Registry;

/// Labels of a served request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// Route template, e.g. `/v1/models/{model}/predict`.
    pub route: String,
    /// HTTP method.
    pub method: String,
    /// Response status code.
    pub status: u16,
}

/// Labels of a request duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
}

type HistogramFamily = Family<RouteLabels, Histogram, fn() -> Histogram>;

/// Every metric the service exports.
pub struct Metrics {
    registry: Registry,
    /// Requests by route, method and status.
    pub http_requests: Family<HttpLabels, Counter>,
    /// Request latency by route.
    pub http_duration: HistogramFamily,
    /// Jobs admitted and waiting for a worker.
    pub queue_depth: Gauge,
    /// Time jobs waited for a worker.
    pub queue_wait: Histogram,
    /// Time jobs ran on a worker.
    pub job_duration: Histogram,
    /// Jobs refused because the queue was full.
    pub jobs_rejected: Counter,
    /// Jobs dropped because their caller left or their deadline passed.
    pub jobs_cancelled: Counter,
    /// Shared asynchronous jobs waiting for a replica (what an autoscaler scales on).
    pub jobs_waiting: Gauge,
    /// ONNX Runtime runs, and the requests they served (more requests than runs: batching).
    pub passes: crate::runtime::batching::PassCounters,
}

fn latency_histogram() -> Histogram {
    // 0.5 ms to about 33 s.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.0005, 2.0, 17,
    ))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("explaind");
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_duration: HistogramFamily = Family::new_with_constructor(latency_histogram);
        let queue_depth = Gauge::default();
        let queue_wait = latency_histogram();
        let job_duration = latency_histogram();
        let jobs_rejected = Counter::default();
        let jobs_cancelled = Counter::default();
        let jobs_waiting = Gauge::default();
        registry.register(
            "async_jobs_waiting",
            "Shared asynchronous jobs waiting for a replica (jobs in PostgreSQL)",
            jobs_waiting.clone(),
        );
        registry.register(
            "http_requests",
            "HTTP requests by route, method and status",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency by route",
            http_duration.clone(),
        );
        registry.register(
            "queue_depth",
            "Jobs admitted and waiting for a worker",
            queue_depth.clone(),
        );
        registry.register(
            "job_queue_wait_seconds",
            "Time jobs waited for a worker",
            queue_wait.clone(),
        );
        registry.register(
            "job_duration_seconds",
            "Time jobs ran on a worker",
            job_duration.clone(),
        );
        registry.register(
            "jobs_rejected",
            "Jobs refused because the queue was full",
            jobs_rejected.clone(),
        );
        registry.register(
            "jobs_cancelled",
            "Jobs dropped: caller gone or deadline passed",
            jobs_cancelled.clone(),
        );
        let passes = crate::runtime::batching::PassCounters::default();
        registry.register(
            "model_runs",
            "ONNX Runtime runs (one pass may serve several requests)",
            passes.runs.clone(),
        );
        registry.register(
            "model_run_requests",
            "Pass requests served by those runs",
            passes.requests.clone(),
        );
        registry.register(
            "model_runs_inline",
            "Of those runs, the ones run on the worker's own thread (small passes), not the intra-op pool",
            passes.inline.clone(),
        );
        Self {
            passes,
            registry,
            http_requests,
            http_duration,
            queue_depth,
            queue_wait,
            job_duration,
            jobs_rejected,
            jobs_cancelled,
            jobs_waiting,
        }
    }
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }

    /// Records one served request.
    pub fn observe_request(&self, route: &str, method: &str, status: u16, seconds: f64) {
        self.http_requests
            .get_or_create(&HttpLabels {
                route: route.to_string(),
                method: method.to_string(),
                status,
            })
            .inc();
        self.http_duration
            .get_or_create(&RouteLabels {
                route: route.to_string(),
            })
            .observe(seconds);
    }
}
