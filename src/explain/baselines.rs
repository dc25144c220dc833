//! Baselines as a method plans and builds them: a text model's `token`, and the job's own input.

pub use crate::common::baselines::*;
use crate::common::Invalid;
use crate::runtime::Tensor;

/// The baseline a request's `baseline` stands for on the planned model: a text model starts from
/// its baseline token (`token`; the default `black` becomes it), other models take any but `token`.
pub(super) fn planned(baseline: &mut Baseline, cx: &super::PlanContext) -> Result<(), Invalid> {
    match (cx.model.spec.text.is_some(), *baseline) {
        (true, Baseline::Black | Baseline::Token) => *baseline = Baseline::Token,
        (true, other) => {
            return Err(Invalid::Request(format!(
                "params.baseline: a text model starts from its baseline token (`token`: model.toml's \
                 text.baseline_token), not `{}`",
                serde_json::to_value(other)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default()
            )))
        }
        (false, Baseline::Token) => {
            return Err(Invalid::Request(
                "params.baseline `token` is for text models; images and tables take black, white, blur, uniform \
                 or mean"
                    .into(),
            ))
        }
        (false, _) => {}
    }
    Ok(())
}

/// The baseline for a job's input: [`build`] for images; for tabular models zeros, or with `Mean`
/// the background data's mean row; for text, whatever `baseline` says, every token but the
/// special ones (`[CLS]`, `[SEP]`) replaced by the baseline token (`[PAD]`), as in Captum's BERT
/// tutorial.
pub fn for_job(baseline: Baseline, job: &super::ExplainJob) -> Tensor {
    if let (Some(model), Some(text)) = (&job.model.text, &job.text) {
        return model.replaced(&text.tokens, &model.baseline);
    }
    for_model(baseline, &job.input, &job.model, job.seed)
}
