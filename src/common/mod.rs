//! What explain, eval, uncertainty and examples share, so that none imports another: why
//! parameters are refused, the limits, targets, baselines, and batch helpers.

pub mod baselines;
pub mod batch;
pub mod detection_targets;
mod invalid;
mod limits;
pub mod targets;

pub use invalid::{bytes, check_range, mul, Invalid};
pub use limits::{Limits, CONFIGURED_MAX_SAMPLES, MAX_FEATURES, MAX_SIDE};
