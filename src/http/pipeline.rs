//! The one path of a request that runs on a model, shared by explain, compare, evaluate, predict,
//! uncertainty and jobs. Each handler reads its body and validates it once into a [`Valid`]
//! request (model resolved, method looked up and planned, limits checked, audit evidence taken);
//! then [`answer`] (or, for a job, [`prepare`] now and [`run`] later) takes a queue slot, prepares
//! the inputs, runs the handler's task on a worker, draws the answer on a blocking thread and
//! serialises it once: the audit record is made from those bytes, and they are what is sent.
//! A handler adds only what is its own, as a [`Work`]: its task and its answer.

use std::sync::Arc;
use std::time::Instant;

use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;

use super::error::{audit_failed, ApiError};
use super::input::RawInput;
use super::prepare::{self, Prepared};
use super::{offload, AppState};
use crate::audit::{Context, Evidence, Kind, Receipt};
use crate::executor::{Admission, Control, Task};
use crate::runtime::LoadedModel;

/// What a handler adds to the pipeline: the worker's task, and the answer drawn from its output.
pub(super) trait Work: Send + 'static {
    /// The worker's task.
    type Task: Task;
    /// The answer's JSON body.
    type Body: Serialize + Send + 'static;
    /// The worker's task for the prepared inputs (a request that does not fit them: 422).
    fn task(&mut self, model: &Arc<LoadedModel>, prepared: &[Prepared]) -> Result<Self::Task, ApiError>;
    /// Bytes drawing the answer touches ([`prepare::drawing_size`]): large drawing leaves the
    /// async threads.
    fn drawing_size(&self, prepared: &[Prepared], output: &<Self::Task as Task>::Output) -> usize;
    /// Draws the answer from the task's output.
    fn draw(
        self,
        model: &LoadedModel,
        prepared: Vec<Prepared>,
        output: <Self::Task as Task>::Output,
        started: Instant,
    ) -> Result<Drawn<Self::Body>, ApiError>;
    /// The audit record the answer makes.
    const RECORD: Record;
    /// Writes the audit receipt into the body (the bytes sent get it as well).
    fn receipt(_body: &mut Self::Body, _receipt: Receipt) {}
}

/// The audit record an answer makes (see `audit::record`).
pub(super) enum Record {
    /// An explanation's (of an `ExplainResponse`).
    Explanation,
    /// A prediction's or an uncertainty estimate's, of this kind (of a `PredictResponse` or an
    /// `UncertaintyResponse`, with what is attached to it).
    Prediction(Kind),
    /// None: the answer is never audited.
    None,
}

/// An answer as drawn: its JSON body, and the picture sent in its place when one was asked for.
pub(super) struct Drawn<B> {
    /// The JSON body.
    pub body: B,
    /// A PNG or an HTML fragment answered instead of the JSON.
    pub picture: Option<Picture>,
}

/// What is answered in place of JSON.
pub(super) enum Picture {
    /// `image/png`.
    Png(Vec<u8>),
    /// An HTML fragment.
    Html(String),
}

/// A finished answer: the body, and its JSON text serialised once (with the audit receipt).
pub(super) struct Done<B> {
    /// The JSON body (its `audit_record` set when one was written).
    pub body: B,
    /// The picture asked for, if any.
    pub picture: Option<Picture>,
    /// The body as JSON text, exactly as sent: present when the answer is JSON or was audited.
    pub json: Option<Vec<u8>>,
    /// That text parsed, when the answer was audited (what the record was made from, receipt added).
    pub value: Option<Value>,
}

/// An answer's audit record to be: the inputs' evidence, and who asked.
pub(super) struct Audit {
    /// One per input.
    pub evidence: Vec<Evidence>,
    /// Who asked.
    pub ctx: Context,
}

/// A request validated once against its model and the limits: the only thing the pipeline runs.
pub(super) struct Valid<W> {
    /// The model.
    pub model: Arc<LoadedModel>,
    /// The inputs as read (decoded only once a queue slot is held).
    pub inputs: Vec<RawInput>,
    /// What the handler asks of them, validated.
    pub work: W,
    /// The audit record to write, when the answer is recorded.
    pub audit: Option<Audit>,
}

/// A validated request with its inputs decoded and preprocessed: ready for a worker.
pub(super) struct Ready<W> {
    model: Arc<LoadedModel>,
    prepared: Vec<Prepared>,
    work: W,
    audit: Option<Audit>,
}

impl<W> Ready<W> {
    /// The model.
    pub fn model(&self) -> &Arc<LoadedModel> {
        &self.model
    }

    /// The handler's work.
    pub fn work(&self) -> &W {
        &self.work
    }

    /// Who asked, for the audit record (a job learns it when it runs).
    pub fn set_context(&mut self, ctx: Context) {
        if let Some(audit) = &mut self.audit {
            audit.ctx = ctx;
        }
    }
}

/// The inputs' audit evidence (hashed off the async threads when large), when a request of `kind`
/// is recorded (`asked`: the request's own `"audit": true`; the record's kind is the work's).
pub(super) async fn audit(
    state: &AppState,
    kind: Kind,
    asked: bool,
    model: &Arc<LoadedModel>,
    inputs: &[RawInput],
    ctx: Context,
) -> Result<Option<Audit>, ApiError> {
    if !state.audit.wants(kind, asked) {
        return Ok(None);
    }
    let (model, inputs, keep) = (model.clone(), inputs.to_vec(), state.audit.keeps_inputs());
    let size = inputs
        .iter()
        .map(RawInput::sent_bytes)
        .fold(0usize, usize::saturating_add);
    let evidence = offload::cpu(size, move || {
        inputs.iter().map(|raw| prepare::evidence(&model, raw, keep)).collect()
    })
    .await?;
    Ok(Some(Audit { evidence, ctx }))
}

/// Takes a queue slot (503 when none is free), then prepares and runs the request.
pub(super) async fn answer<W: Work>(
    state: &AppState,
    valid: Valid<W>,
    started: Instant,
) -> Result<Done<W::Body>, ApiError> {
    let admission = state.executor.admit()?;
    let ready = prepare(state, valid).await?;
    run(state, ready, admission, None, started).await
}

/// Decodes and preprocesses the inputs (a corrupt or unfit input: 4xx).
pub(super) async fn prepare<W>(state: &AppState, valid: Valid<W>) -> Result<Ready<W>, ApiError> {
    let Valid {
        model,
        inputs,
        work,
        audit,
    } = valid;
    let prepared = prepare::prepare_all(&model, inputs, &state.config).await?;
    Ok(Ready {
        model,
        prepared,
        work,
        audit,
    })
}

/// Runs a ready request on `admission` (under `control`, for a job), draws its answer, serialises
/// it once and writes its audit record: the answer is not given unless the record is written.
pub(super) async fn run<W: Work>(
    state: &AppState,
    ready: Ready<W>,
    admission: Admission,
    control: Option<Control>,
    started: Instant,
) -> Result<Done<W::Body>, ApiError> {
    let Ready {
        model,
        prepared,
        mut work,
        audit,
    } = ready;
    let task = work.task(&model, &prepared)?;
    let output = match control {
        Some(control) => admission.run_controlled(task, control).await?,
        None => admission.run(task).await?,
    };
    let audited = audit.is_some();
    let size = work.drawing_size(&prepared, &output);
    let mut done = offload::cpu(size, move || {
        let drawn = work.draw(&model, prepared, output, started)?;
        serialise(drawn, audited)
    })
    .await??;
    if let Some(audit) = audit {
        let value = done
            .value
            .as_mut()
            .ok_or_else(|| ApiError::internal("audited answer not serialised"))?;
        let receipt = record::<W>(state, audit, value).await?;
        if let Some(json) = &mut done.json {
            with_receipt(json, &receipt)?;
        }
        value["audit_record"] = serde_json::to_value(&receipt).map_err(ApiError::internal)?;
        W::receipt(&mut done.body, receipt);
    }
    Ok(done)
}

/// The body as JSON text, once: when it is what is sent, or when it is audited (then parsed too,
/// for the record: the record reads the numbers as the text writes them, an f32 as `0.06`).
fn serialise<B: Serialize>(drawn: Drawn<B>, audited: bool) -> Result<Done<B>, ApiError> {
    let Drawn { body, picture } = drawn;
    let json = (picture.is_none() || audited)
        .then(|| serde_json::to_vec(&body))
        .transpose()
        .map_err(ApiError::internal)?;
    let value = match (&json, audited) {
        (Some(text), true) => Some(serde_json::from_slice(text).map_err(ApiError::internal)?),
        _ => None,
    };
    Ok(Done {
        body,
        picture,
        json,
        value,
    })
}

/// Writes the audit record of an answer (`value`: the answer as sent, before its receipt).
async fn record<W: Work>(state: &AppState, audit: Audit, value: &Value) -> Result<Receipt, ApiError> {
    let Audit { evidence, ctx } = audit;
    let written = match W::RECORD {
        Record::Explanation => {
            let one = evidence
                .into_iter()
                .next()
                .ok_or_else(|| ApiError::internal("an explanation without its input's evidence"))?;
            state.audit.explanation(&ctx, one, value).await
        }
        Record::Prediction(kind) => state.audit.prediction(kind, &ctx, evidence, value).await,
        Record::None => return Err(ApiError::internal("an answer that is never audited has audit evidence")),
    };
    written.map_err(audit_failed)
}

/// Adds `"audit_record"` to a body's JSON text in place: every answer that is audited has it as
/// its last field (skipped while empty), so this is the text serde writes with the receipt set,
/// and the answer need not be serialised again (a test checks both agree).
fn with_receipt(json: &mut Vec<u8>, receipt: &Receipt) -> Result<(), ApiError> {
    if json.pop() != Some(b'}') {
        return Err(ApiError::internal("an audited answer is not a JSON object"));
    }
    if json.last() != Some(&b'{') {
        json.push(b',');
    }
    json.extend_from_slice(br#""audit_record":"#);
    serde_json::to_writer(&mut *json, receipt).map_err(ApiError::internal)?;
    json.push(b'}');
    Ok(())
}

impl<B> Done<B> {
    /// The answer: its picture, else its JSON text with the content type axum's `Json` gives.
    pub fn into_response(self) -> Response {
        match (self.picture, self.json) {
            (Some(Picture::Png(png)), _) => ([(header::CONTENT_TYPE, "image/png")], png).into_response(),
            (Some(Picture::Html(html)), _) => {
                ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response()
            }
            (None, Some(json)) => ([(header::CONTENT_TYPE, "application/json")], json).into_response(),
            (None, None) => ApiError::internal("a JSON answer not serialised").into_response(),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Serialize;

    use super::with_receipt;
    use crate::audit::Receipt;
    use crate::http::explain::{Attributions, ExplainResponse, ExplainStats, TargetExplanation};
    use crate::http::predict::PredictResponse;
    use crate::http::uncertainty::UncertaintyResponse;
    use crate::runtime::predict::Prediction;

    fn receipt() -> Receipt {
        Receipt {
            id: "5f0c6b3e-0000-4000-8000-000000000001".into(),
            seq: 42,
            hash: "ab".repeat(32),
        }
    }

    /// The receipt added to the text is what serde writes with the receipt in the body.
    fn agrees<B: Serialize>(mut body: B, set: impl FnOnce(&mut B, Receipt)) {
        let mut text = serde_json::to_vec(&body).unwrap();
        with_receipt(&mut text, &receipt()).unwrap();
        set(&mut body, receipt());
        assert_eq!(
            String::from_utf8(text).unwrap(),
            serde_json::to_string(&body).unwrap(),
            "`audit_record` must stay the last field of every audited answer"
        );
    }

    fn explanation(single: bool) -> ExplainResponse {
        let target = TargetExplanation {
            detection: None,
            target: Prediction {
                index: 3,
                label: "cat".into(),
                score: 0.06,
            },
            attributions: Attributions {
                shape: vec![1, 2],
                values: vec![0.1, -0.25],
                tensor: None,
            },
            features: None,
            tokens: None,
            words: None,
            convergence_delta: Some(0.01),
            layer: None,
            overlay_png: None,
            details: Some(serde_json::json!({"r2": 0.5})),
            evaluation: None,
        };
        let (single, explanations) = match single {
            true => (Some(target), None),
            false => (None, Some(vec![target])),
        };
        ExplainResponse {
            id: "e".into(),
            model: "m".into(),
            model_sha256: "00".into(),
            method: "saliency".into(),
            params: serde_json::json!({"abs": true}),
            seed: Some(7),
            region: None,
            truncated: None,
            single,
            explanations,
            stats: ExplainStats {
                model_rows: 1,
                planned_rows: 1,
                model_runs: 1,
                wall_ms: 1.5,
                worker_ms: 1.0,
                model_ms: 0.5,
            },
            audit_record: None,
        }
    }

    #[test]
    fn receipt_added_to_the_text_is_the_serialised_receipt() {
        for single in [true, false] {
            agrees(explanation(single), |b, r| b.audit_record = Some(r));
        }
        let predict = PredictResponse {
            model: "m".into(),
            model_sha256: "00".into(),
            predictions: None,
            outputs: None,
            segmentation: None,
            regression: None,
            detections: None,
            explanation: Some(explanation(true)),
            uncertainty: None,
            truncated: Some(false),
            instances: None,
            audit_record: None,
        };
        agrees(predict, |b, r| b.audit_record = Some(r));
        let uncertainty = UncertaintyResponse {
            model: "m".into(),
            model_sha256: "00".into(),
            uncertainty: None,
            instances: None,
            took_ms: 2.0,
            audit_record: None,
        };
        agrees(uncertainty, |b, r| b.audit_record = Some(r));
    }

    #[test]
    fn an_empty_object_gets_no_comma() {
        let mut text = b"{}".to_vec();
        with_receipt(&mut text, &receipt()).unwrap();
        let value: serde_json::Value = serde_json::from_slice(&text).unwrap();
        assert_eq!(value["audit_record"]["seq"], 42);
        assert!(with_receipt(&mut b"[1]".to_vec(), &receipt()).is_err());
    }
}
