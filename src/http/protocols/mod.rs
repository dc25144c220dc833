//! Other serving platforms' request and response shapes, one file per protocol, over explaind's
//! own pipeline: each adapter parses its protocol's body into the inputs and options explaind's
//! handlers validate (the same limits, the same queue, the same audit), and writes the answer and
//! the errors in that protocol's shape. They never validate or run anything themselves.

pub mod kserve_v1;
pub mod oip;
pub mod vertex;

use std::sync::Arc;
use std::time::Instant;

use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Serialize;
use utoipa::ToSchema;

use super::auth::{audit_context, Caller};
use super::error::{ApiError, ProblemKind};
use super::explain::ValidExplain;
use super::input::RawInput;
use super::pipeline::{self, Done, Drawn, Record, Valid, Work};
use super::prepare::{self, Prepared};
use super::AppState;
use crate::audit::Kind;
use crate::jobs::{Condition, ExplainResult, PredictJob, PredictOutput};
use crate::runtime::predict::RowPrediction;
use crate::runtime::LoadedModel;

/// An error as KServe V1 and the Open Inference Protocol write it: `{"error": "..."}`, with
/// explaind's problem `type` beside it (clients of those protocols read `error` and ignore the
/// rest), the problem's status and headers (`Retry-After` on 503).
#[derive(Debug)]
pub struct ProtocolError(pub ApiError);

/// The body of a [`ProtocolError`].
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong, and what to do about it.
    pub error: String,
    /// explaind's problem type (`/problems/{slug}`), as its own endpoints answer it.
    #[serde(rename = "type")]
    pub type_uri: String,
}

impl From<ApiError> for ProtocolError {
    fn from(e: ApiError) -> Self {
        Self(e)
    }
}

impl IntoResponse for ProtocolError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: self.0.detail.clone(),
            type_uri: self.0.kind.type_uri(),
        };
        // The problem's own response first: its status, log line and headers stay one place's.
        let mut response = self.0.into_response();
        let json = serde_json::to_vec(&body).unwrap_or_default();
        response
            .headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response.headers_mut().remove(header::CONTENT_LENGTH);
        *response.body_mut() = axum::body::Body::from(json);
        response
    }
}

/// One input row's result: its prediction, its explanation when one was asked, its input.
pub(super) struct Row {
    /// The model's outputs for the row (and its ranked classes).
    pub prediction: RowPrediction,
    /// The row's explanation.
    pub explained: Option<ExplainResult>,
    /// The row as prepared.
    pub prepared: Prepared,
}

/// How a protocol writes its answer from the rows of a prediction.
pub(super) trait Shape: Send + 'static {
    /// The answer's JSON body.
    type Body: Serialize + Send + 'static;
    /// Writes the answer.
    fn draw(
        self,
        model: &LoadedModel,
        rows: Vec<Row>,
        explain: Option<&ValidExplain>,
        max_map_pixels: u64,
        started: Instant,
    ) -> Result<Self::Body, ApiError>;
}

/// A prediction of every input, each explained when an explanation is asked: the one job every
/// protocol here runs (explaind's own predict job), written in the protocol's shape.
pub(super) struct Serving<S> {
    shape: S,
    explain: Option<ValidExplain>,
    max_map_pixels: u64,
}

impl<S: Shape> Work for Serving<S> {
    type Task = PredictJob;
    type Body = S::Body;
    const RECORD: Record = Record::Prediction(Kind::Prediction);

    fn task(&mut self, model: &Arc<LoadedModel>, prepared: &[Prepared]) -> Result<PredictJob, ApiError> {
        let explain = match &self.explain {
            Some(v) => Some(v.attach(Condition::default(), prepared)?),
            None => None,
        };
        Ok(super::predict::job(model, prepared, 1, explain, None))
    }

    fn drawing_size(&self, prepared: &[Prepared], _: &PredictOutput) -> usize {
        prepare::drawing_size(prepared, self.explain.is_some() as usize, false)
    }

    fn draw(
        self,
        model: &LoadedModel,
        prepared: Vec<Prepared>,
        output: PredictOutput,
        started: Instant,
    ) -> Result<Drawn<S::Body>, ApiError> {
        let rows = output
            .rows
            .into_iter()
            .zip(output.explained)
            .zip(prepared)
            .map(|((prediction, explained), prepared)| Row {
                prediction,
                explained,
                prepared,
            })
            .collect();
        let body = self
            .shape
            .draw(model, rows, self.explain.as_ref(), self.max_map_pixels, started)?;
        Ok(Drawn { body, picture: None })
    }
}

/// Runs `inputs` through explaind's pipeline (the request-size, batch and byte limits, the queue,
/// the deadline, the audit record) as a prediction, each explained by `explain` when given.
pub(super) async fn serve<S: Shape>(
    state: &AppState,
    model: Arc<LoadedModel>,
    inputs: Vec<RawInput>,
    explain: Option<ValidExplain>,
    shape: S,
    who: (&HeaderMap, Option<Extension<Caller>>),
    started: Instant,
) -> Result<Done<S::Body>, ApiError> {
    if inputs.is_empty() {
        return Err(invalid("the request has no inputs: send at least one instance or row"));
    }
    super::predict::check_counts(state, 1, inputs.len())?;
    let kind = match explain {
        Some(_) => Kind::Explanation,
        None => Kind::Prediction,
    };
    let ctx = audit_context(who.0, who.1)?;
    let audit = pipeline::audit(state, kind, false, &model, &inputs, ctx).await?;
    let work = Serving {
        shape,
        explain,
        max_map_pixels: state.config.max_map_pixels,
    };
    let valid = Valid {
        model,
        inputs,
        work,
        audit,
    };
    pipeline::answer(state, valid, started).await
}

/// A refusal of a request that does not follow its protocol.
pub(super) fn invalid(detail: impl Into<String>) -> ApiError {
    ApiError::new(ProblemKind::InvalidRequest, detail)
}
