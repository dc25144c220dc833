//! Observability: Prometheus metrics and log set-up.

mod logging;
mod metrics;

pub use logging::init_logging;
pub use metrics::{HttpLabels, Metrics};
