//! Similar examples: the reference rows nearest the input in the model's embedding (the input of
//! its last linear layer, or the manifest's `embedding_layer`), by cosine or Euclidean distance,
//! or by the cosine of the last layer's loss gradients (Hanawa et al. 2021's "GC", the measure
//! that best passed their tests of relevance). Forward passes only; the set is searched by brute
//! force over every row (tens of thousands of rows take milliseconds).

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::counterfactual::ClassRef;
use super::method::{bytes, check_range, schemas_of, Capabilities, Cost, Invalid, Method, NamedSchemas, PlanContext};
use super::reference_query::{allowed, check_influence, input_vectors, reference_of, scored_with, ROWS};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::examples::{Metric, RowScore};
use crate::runtime::predict::Prediction;
use crate::runtime::RuntimeError;

/// Similar-example parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct SimilarExamplesParams {
    /// How many rows to return.
    #[schema(default = 5, minimum = 1, maximum = 100)]
    pub k: usize,
    /// `cosine` (similarity, higher is nearer), `l2` (distance, lower is nearer) or
    /// `gradient_cosine` (cosine of the last layer's loss gradients for the target's label).
    pub metric: Metric,
    /// Only rows with these labels (names or class indices); empty: every row.
    pub labels: Vec<ClassRef>,
}

impl Default for SimilarExamplesParams {
    fn default() -> Self {
        Self {
            k: 5,
            metric: Metric::Cosine,
            labels: Vec::new(),
        }
    }
}

/// Similar examples' `details`: the rows found.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SimilarExamplesDetails {
    /// The rows, nearest first.
    pub examples: Vec<RowScore>,
    /// The measure that ranked them.
    pub metric: Metric,
    /// What each row's `score` is: `distance` (`l2`, lower is nearer) or `similarity`.
    #[schema(pattern = "^(distance|similarity)$")]
    pub score: String,
    /// The layer whose values are the embedding.
    pub embedding_layer: String,
    /// Rows in the reference set.
    pub reference_rows: usize,
}

/// Similar examples.
pub struct SimilarExamples;

impl Method for SimilarExamples {
    type Params = SimilarExamplesParams;
    const NAME: &'static str = "similar-examples";
    const SUMMARY: &'static str =
        "The reference rows most like the input in the model's embedding (cosine, l2, or gradient cosine)";
    const CAPABILITIES: Capabilities = ROWS;

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<SimilarExamplesDetails>())
    }

    fn plan(p: &mut SimilarExamplesParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("k", p.k, 1, 100)?;
        let set = reference_of(&cx.reference, cx.model)?;
        if p.metric == Metric::GradientCosine {
            check_influence(&set, cx.model)?;
        }
        allowed(cx.model, &p.labels)?;
        Ok(Cost {
            samples: 1,
            rows: 1,
            // Every row's score, and the input's vectors.
            bytes: bytes(set.len(), 16).saturating_add(bytes(set.embedding_len(), 8)),
        })
    }

    fn with_scores(_: &Self::Params, job: &ExplainJob) -> Vec<String> {
        scored_with(job)
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &SimilarExamplesParams,
        targets: &[Prediction],
        _: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let set = reference_of(&job.reference, &job.model).map_err(|e| unsupported(job, e))?;
        let mask = allowed(&job.model, &p.labels).map_err(|e| unsupported(job, e))?;
        let vectors = input_vectors(cx, job, &set, false)?;
        let labels = &job.model.spec.labels;
        let mut out = Vec::new();
        for target in targets {
            let query = vectors.query(target.index);
            let found = set.similar(&query, p.metric, mask.as_deref(), p.k);
            let examples: Vec<_> = found.iter().map(|&(i, s)| set.row(i, labels, s)).collect();
            let details = SimilarExamplesDetails {
                examples,
                metric: p.metric,
                score: if p.metric == Metric::L2 {
                    "distance"
                } else {
                    "similarity"
                }
                .into(),
                embedding_layer: set.head.embedding.clone(),
                reference_rows: set.len(),
            };
            out.push(TargetAttribution::from_details(
                target,
                serde_json::to_value(details).unwrap_or_default(),
            ));
        }
        Ok(out)
    }
}

/// A plan-time check that no longer holds on the worker (cannot happen: sets are replaced whole).
pub(super) fn unsupported(job: &ExplainJob, e: Invalid) -> RuntimeError {
    RuntimeError::UnsupportedModel {
        model: job.model.name.clone(),
        message: e.to_string(),
    }
}
