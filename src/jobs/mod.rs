//! Worker tasks: each composes the pieces under it (a method, metrics, uncertainty estimates, a
//! prediction) into one job for the executor. The only layer that knows several of them; the
//! executor runs any task and knows none.

mod compare;
pub mod concepts;
mod evaluate;
mod explain;
pub mod patterns;
mod predict;
pub mod reference;
mod region;
mod sanity;
mod uncertainty;

pub use compare::CompareTask;
pub use evaluate::EvaluateTask;
pub use explain::{ExplainResult, ExplainTask};
pub use predict::{AttachedExplain, Condition, PredictJob, PredictOutput, PredictTask};
pub use uncertainty::UncertaintyTask;
