//! Why a request's parameters were refused, and the checked arithmetic that refuses them.

use std::fmt;

/// Why parameters were refused. `Request` errors are wrong on their own (400); the others are
/// fine on their own but do not fit this model or this service's limits (422).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Invalid {
    /// A parameter is malformed or out of its range (400).
    Request(String),
    /// The request does not fit this model: a layer it lacks, a target out of range, a budget that
    /// this input's size exceeds (422).
    Model(String),
    /// The method cannot read this model at all (422, `unsupported-model`).
    Unsupported(String),
    /// The method needs gradients the model cannot give (422, `model-not-differentiable`).
    NotDifferentiable(String),
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Request(m) | Invalid::Model(m) | Invalid::Unsupported(m) | Invalid::NotDifferentiable(m) => {
                f.write_str(m)
            }
        }
    }
}

/// `Err(Invalid::Request)` unless `value` lies in `range`, naming the parameter.
pub fn check_range<T: PartialOrd + fmt::Display + Copy>(name: &str, value: T, lo: T, hi: T) -> Result<(), Invalid> {
    if value < lo || value > hi {
        return Err(Invalid::Request(format!(
            "params.{name} must be between {lo} and {hi}, got {value}"
        )));
    }
    Ok(())
}

/// `a * b`, or an error naming what overflowed (a hostile product of parameters).
pub fn mul(a: usize, b: usize, what: &str) -> Result<usize, Invalid> {
    a.checked_mul(b)
        .ok_or_else(|| Invalid::Request(format!("{what} overflows: {a} x {b}")))
}

/// Bytes of `count` values of `size` bytes each, saturating (the budget check then refuses it).
pub fn bytes(count: usize, size: usize) -> u64 {
    (count as u64).saturating_mul(size as u64)
}
