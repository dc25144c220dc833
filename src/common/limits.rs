//! The bounds every request's work stays within: the configured limits, and the largest numbers
//! the API document states for parameters.

/// Limits that bound every explanation's work, from the config.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Most samples one explanation may draw (steps x targets, masks, windows, coalitions...).
    pub max_samples: usize,
    /// Most targets per request.
    pub max_targets: usize,
    /// Most bytes one explanation's plan may hold at once.
    pub max_job_bytes: u64,
    /// Rows per model pass.
    pub max_batch: usize,
}

impl Limits {
    /// The limits the config sets.
    pub fn from_config(config: &crate::config::Config) -> Self {
        Self {
            max_samples: config.max_samples,
            max_targets: config.max_targets,
            max_job_bytes: config.max_job_bytes,
            max_batch: config.max_batch.max(1),
        }
    }
}

/// Most pixels a size parameter may name (a window, a grid step, a blur): a bound the API document
/// states; each method also keeps it within the input's own side.
pub const MAX_SIDE: usize = 65_536;

/// Most features a count parameter may name (an anchor's conditions, a metric's subset): a bound
/// the API document states; each is also kept within the input's own features.
pub const MAX_FEATURES: usize = 1 << 24;

/// Stands for the service's `max_samples` in a parameter's `x-maximum` (the API document puts the
/// configured number in its place).
pub const CONFIGURED_MAX_SAMPLES: &str = "max_samples";
