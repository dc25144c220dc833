//! The method core: one [`Method`] trait that every explanation method implements in its own file,
//! and the [`Methods`] registry that lists them. A request's parameters are validated once, at the
//! edge, into a [`ValidParams`] whose [`Cost`] (model rows and bytes) has been checked against the
//! job's [`Limits`]; the worker accepts nothing else.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;
use utoipa::openapi::schema::Schema;
use utoipa::openapi::RefOr;
use utoipa::ToSchema;

use super::{Cx, ExplainJob, TargetAttribution};
pub use crate::common::{bytes, check_range, mul, Invalid, Limits, CONFIGURED_MAX_SAMPLES, MAX_FEATURES, MAX_SIDE};
use crate::onnx::autodiff::RuleSet;
use crate::runtime::predict::Prediction;
use crate::runtime::{LoadedModel, RuntimeError};

/// What a method asks of the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Passes {
    /// No model passes (the method reads the model itself, as TreeSHAP reads trees).
    None,
    /// Forward passes only: any model ONNX Runtime runs.
    Forward,
    /// The backward model: input gradients, or a layer's activations and gradients.
    Gradients,
}

/// Which models a method explains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Inputs {
    /// Image and tabular models.
    Any,
    /// Image models only.
    Image,
    /// Tabular models only.
    Tabular,
}

/// A method's capabilities, as data: the core checks them, the model page and the OpenAPI text
/// report them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct Capabilities {
    /// The passes it runs.
    pub passes: Passes,
    /// The models it explains.
    pub inputs: Inputs,
    /// Whether it weighs a spatial layer (CAM methods).
    pub layer: bool,
    /// Whether it draws random numbers (and so takes and echoes a seed).
    pub random: bool,
    /// Whether it answers with reference rows (`details`: similar examples, influence) rather
    /// than an attribution over the input.
    pub examples: bool,
    /// Whether it answers a decision's rule or counterfactuals (`details`), which `format=html`
    /// draws as a fragment.
    pub decision: bool,
    /// Whether it explains text models (one value per token).
    pub text: bool,
    /// Whether it answers an image it made (`details.image_png`, activation maximisation) rather
    /// than an attribution over the input: no metric judges it, and it may need no input.
    pub makes_image: bool,
}

/// What a validated plan will cost: the bound the core checks before anything is queued.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cost {
    /// Samples drawn (the unit of `max_samples`: path points x targets, masks, windows, coalitions).
    pub samples: usize,
    /// Model rows run, forward or backward (for progress: the same unit the job reports).
    pub rows: usize,
    /// Bytes the plan holds at its peak (inputs, batches, masks, matrices, maps kept for the answer).
    pub bytes: u64,
}

/// What validation sees: the model, the limits, and how many targets the request names.
pub struct PlanContext<'a> {
    /// The model.
    pub model: &'a LoadedModel,
    /// The service's limits.
    pub limits: Limits,
    /// Targets the request will explain (1 by default, the list's length, or `top_k`).
    pub targets: usize,
    /// The model's reference set in force, when it has one (the example-based methods).
    pub reference: Option<Arc<crate::examples::ReferenceSet>>,
}

impl PlanContext<'_> {
    /// Values in one input row (the model's input size without the batch axis).
    pub fn input_len(&self) -> usize {
        let spec = &self.model.spec;
        match (&spec.image, &spec.tabular) {
            (Some(i), _) => i.height.saturating_mul(i.width).saturating_mul(i.channels),
            (None, Some(t)) => t.features.len(),
            (None, None) => spec
                .text
                .as_ref()
                .map_or(1, |t| t.max_length.saturating_mul(t.embedding_size)),
        }
    }

    /// Output classes (at least 1); a detector's target positions (a row of its scores output).
    pub fn classes(&self) -> usize {
        crate::common::detection_targets::width(self.model)
    }

    /// Pixels of the model's input image (0 for tabular models).
    pub fn pixels(&self) -> usize {
        self.model
            .spec
            .image
            .as_ref()
            .map_or(0, |i| i.height.saturating_mul(i.width))
    }

    /// Bytes one batch of `rows` rows holds through a pass: the input, and for gradient passes the
    /// input gradient too (f32 each).
    pub fn batch_bytes(&self, rows: usize, gradients: bool) -> u64 {
        let per_row = bytes(self.input_len(), 4).saturating_mul(if gradients { 2 } else { 1 });
        per_row.saturating_mul(rows.min(self.limits.max_batch) as u64)
    }

    /// Bytes of the per-target results kept for the answer: the input-space tensor and the map.
    pub fn answer_bytes(&self) -> u64 {
        bytes(self.input_len().saturating_add(self.pixels()), 4).saturating_mul(self.targets as u64)
    }
}

/// An explanation method: one type, in one file, registered with one line in [`Methods::standard`].
pub trait Method: Send + Sync + 'static {
    /// Its parameters: serde with defaults (`#[serde(default)]`), refusing unknown names, and a
    /// utoipa schema whose defaults and bounds are the ones `plan` enforces.
    type Params: Serialize + DeserializeOwned + Default + ToSchema + Clone + fmt::Debug + Send + Sync + 'static;
    /// The path segment (`integrated-gradients`).
    const NAME: &'static str;
    /// One line for the API document, and the note beside the method on the web page.
    const SUMMARY: &'static str;
    /// What it needs and explains.
    const CAPABILITIES: Capabilities;

    /// Checks `params` against the model and the limits, fills the defaults that depend on the model
    /// (so the answer says exactly what ran), and states the plan's cost. Runs at the edge, before a
    /// queue slot is taken or the input decoded.
    fn plan(params: &mut Self::Params, cx: &PlanContext) -> Result<Cost, Invalid>;

    /// Runs the plan for `targets`, given the input's `scores`.
    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        params: &Self::Params,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError>;

    /// The gradient pass (layers, rule set) that explains the top prediction of a fresh input,
    /// when the method's first pass is one such: the worker runs it with the class chosen inside
    /// the graph, so no forward pass is needed to choose it, and hands it to `explain` in place of
    /// that pass. `None` (the default) for methods that do not start with one gradient pass. With
    /// layers, the pass stops at them and is the one [`Cx::layer_gradients`] runs (standard rules);
    /// without, it is [`Cx::gradients`]'s, which gives the input gradient.
    fn one_pass(_params: &Self::Params, _job: &ExplainJob) -> Option<(Vec<String>, RuleSet)> {
        None
    }

    /// [`Self::one_pass`] for a method whose pass needs what the worker keeps (PatternNet's
    /// fitted patterns): `None` while it is not kept. Default: [`Self::one_pass`].
    fn kept_one_pass(
        _cx: &mut Cx,
        params: &Self::Params,
        job: &ExplainJob,
    ) -> Result<Option<(Vec<String>, RuleSet)>, RuntimeError> {
        Ok(Self::one_pass(params, job))
    }

    /// Tensors the pass that scores a fresh input also returns (the embedding a reference set is
    /// searched with), so that `explain` takes them from [`Cx::scored`] instead of running the
    /// input again. None by default.
    fn with_scores(_params: &Self::Params, _job: &ExplainJob) -> Vec<String> {
        Vec::new()
    }

    /// The rule sets its gradient passes build with, for the planned `params`: a model the
    /// report says these rules refuse is refused before any work. Default: exact gradients for
    /// methods whose passes are `Passes::Gradients`, none for the others.
    fn rules(_params: &Self::Params) -> Vec<RuleSet> {
        match Self::CAPABILITIES.passes {
            Passes::Gradients => vec![RuleSet::Exact],
            Passes::Forward | Passes::None => Vec::new(),
        }
    }

    /// The input row (the model's input tensor without its batch axis) it starts from when the
    /// request sends no input, for the planned `params`: a method that makes an image from noise
    /// has one (its start image, which also chooses the default target). `None` (the default):
    /// the request must send its input.
    fn own_input(_params: &Self::Params, _model: &LoadedModel) -> Option<Vec<f32>> {
        None
    }

    /// The schema of its answers' `details`, beside the code that fills them (best the very type
    /// it serialises, through [`schemas_of`]), for the API document and the model page; `None`
    /// (the default) for methods whose answers carry none.
    fn details_schema() -> Option<NamedSchemas> {
        None
    }
}

/// A schema's name and the schemas it names, its own first (utoipa's components).
pub type NamedSchemas = (String, Vec<(String, RefOr<Schema>)>);

/// `T`'s schema by name, with the schemas it refers to.
pub fn schemas_of<T: ToSchema>() -> NamedSchemas {
    let name = T::name().to_string();
    let mut schemas = vec![(name.clone(), <T as utoipa::PartialSchema>::schema())];
    T::schemas(&mut schemas);
    (name, schemas)
}

/// Every answer's `details` carry what the job cost (`cost`, counted by the runtime): the
/// method's own `details` schema with it added, or a schema of it alone.
fn with_cost(named: Option<NamedSchemas>) -> NamedSchemas {
    let (cost_name, cost_schemas) = schemas_of::<crate::runtime::job::PassCost>();
    let (name, mut schemas) = named.unwrap_or_else(|| {
        let only = serde_json::json!({"type": "object", "description": "What the explanation cost."});
        let schema = serde_json::from_value(only).unwrap_or_default();
        ("Details".to_string(), vec![("Details".to_string(), schema)])
    });
    if let Some((_, schema)) = schemas.iter_mut().find(|(n, _)| *n == name) {
        let mut value = serde_json::to_value(&*schema).unwrap_or_default();
        value["properties"]["cost"] = serde_json::json!({
            "$ref": format!("#/components/schemas/{cost_name}"),
            "description": "What the explanation cost, in pass units (the whole answer: every target's passes and the metrics').",
        });
        match value["required"].as_array_mut() {
            Some(required) => required.push("cost".into()),
            None => value["required"] = serde_json::json!(["cost"]),
        }
        if let Ok(with) = serde_json::from_value(value) {
            *schema = with;
        }
    }
    schemas.extend(cost_schemas);
    (name, schemas)
}

/// A method behind the registry's uniform face.
pub trait AnyMethod: Send + Sync {
    /// The path segment.
    fn name(&self) -> &'static str;
    /// One line for the API document.
    fn summary(&self) -> &'static str;
    /// What it needs and explains.
    fn capabilities(&self) -> Capabilities;
    /// Its parameters' schema name and schema, with the schemas they refer to.
    fn params_schemas(&self) -> NamedSchemas;
    /// Its answers' `details` schema, as [`Method::details_schema`].
    fn details_schemas(&self) -> Option<NamedSchemas>;
    /// Its default parameters, as JSON.
    fn default_params(&self) -> serde_json::Value;
    /// Parses and plans parameters.
    fn plan(&self, params: serde_json::Value, cx: &PlanContext) -> Result<ValidParams, Invalid>;
}

struct Registered<M>(std::marker::PhantomData<M>);

impl<M: Method> AnyMethod for Registered<M> {
    fn name(&self) -> &'static str {
        M::NAME
    }

    fn summary(&self) -> &'static str {
        M::SUMMARY
    }

    fn capabilities(&self) -> Capabilities {
        M::CAPABILITIES
    }

    fn params_schemas(&self) -> NamedSchemas {
        schemas_of::<M::Params>()
    }

    fn details_schemas(&self) -> Option<NamedSchemas> {
        Some(with_cost(M::details_schema()))
    }

    fn default_params(&self) -> serde_json::Value {
        serde_json::to_value(M::Params::default()).unwrap_or_default()
    }

    fn plan(&self, params: serde_json::Value, cx: &PlanContext) -> Result<ValidParams, Invalid> {
        // The error names the parameter that is wrong (`params.composite: unknown variant ...`).
        let mut parsed: M::Params = serde_path_to_error::deserialize(params).map_err(|e| {
            let at = e.path().to_string();
            let inner = e.into_inner();
            Invalid::Request(match at.as_str() {
                "." | "" => format!("params: {inner}"),
                _ => format!("params.{at}: {inner}"),
            })
        })?;
        let cost = M::plan(&mut parsed, cx)?;
        // After planning, so defaults that depend on the model (a search kind) are filled in.
        for set in M::rules(&parsed) {
            check_rules(&set, cx.model)?;
        }
        check_cost(cost, cx.limits)?;
        // Through text, so f32 parameters echo as written (0.15, not 0.15000000596).
        let echo = serde_json::to_string(&parsed)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Ok(ValidParams {
            name: M::NAME,
            capabilities: M::CAPABILITIES,
            echo,
            cost,
            run: Arc::new(Run::<M>(parsed)),
        })
    }
}

/// Refuses a plan whose cost passes the limits; the message names the limit to raise.
fn check_cost(cost: Cost, limits: Limits) -> Result<(), Invalid> {
    if cost.samples > limits.max_samples {
        return Err(Invalid::Model(format!(
            "this explanation needs {} samples; the limit is {} (max_samples)",
            cost.samples, limits.max_samples
        )));
    }
    check_bytes(cost.bytes, 1, limits)
}

/// Refuses `explanations` plans of `bytes` each when together they pass `max_job_bytes`.
pub fn check_bytes(bytes: u64, explanations: usize, limits: Limits) -> Result<(), Invalid> {
    let total = bytes.saturating_mul(explanations as u64);
    if total > limits.max_job_bytes {
        return Err(Invalid::Model(format!(
            "{explanations} explanation(s) would hold {} MiB; the limit is {} MiB (max_job_bytes): ask for fewer \
             samples, targets, segments or instances",
            total.div_ceil(1 << 20),
            limits.max_job_bytes >> 20
        )));
    }
    Ok(())
}

/// A method's parsed parameters, bound to its `explain`.
trait Runnable: Send + Sync + fmt::Debug {
    fn explain(
        &self,
        cx: &mut Cx,
        job: &ExplainJob,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError>;

    fn one_pass(&self, cx: &mut Cx, job: &ExplainJob) -> Result<Option<(Vec<String>, RuleSet)>, RuntimeError>;

    fn with_scores(&self, job: &ExplainJob) -> Vec<String>;

    fn rules(&self) -> Vec<RuleSet>;

    fn own_input(&self, model: &LoadedModel) -> Option<Vec<f32>>;
}

struct Run<M: Method>(M::Params);

impl<M: Method> fmt::Debug for Run<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}({:?})", M::NAME, self.0)
    }
}

impl<M: Method> Runnable for Run<M> {
    fn explain(
        &self,
        cx: &mut Cx,
        job: &ExplainJob,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        M::explain(cx, job, &self.0, targets, scores)
    }

    fn one_pass(&self, cx: &mut Cx, job: &ExplainJob) -> Result<Option<(Vec<String>, RuleSet)>, RuntimeError> {
        M::kept_one_pass(cx, &self.0, job)
    }

    fn with_scores(&self, job: &ExplainJob) -> Vec<String> {
        M::with_scores(&self.0, job)
    }

    fn rules(&self) -> Vec<RuleSet> {
        M::rules(&self.0)
    }

    fn own_input(&self, model: &LoadedModel) -> Option<Vec<f32>> {
        M::own_input(&self.0, model)
    }
}

/// A method with parameters validated against a model and the limits: what workers accept.
#[derive(Clone)]
pub struct ValidParams {
    name: &'static str,
    capabilities: Capabilities,
    echo: serde_json::Value,
    cost: Cost,
    run: Arc<dyn Runnable>,
}

impl fmt::Debug for ValidParams {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ValidParams")
            .field("run", &self.run)
            .field("cost", &self.cost)
            .finish()
    }
}

impl ValidParams {
    /// The method's name.
    pub fn method(&self) -> &'static str {
        self.name
    }

    /// The method's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.capabilities
    }

    /// Every parameter as it will run, defaults filled in.
    pub fn echo(&self) -> &serde_json::Value {
        &self.echo
    }

    /// The plan's checked cost.
    pub fn cost(&self) -> Cost {
        self.cost
    }

    /// The rule sets its gradient passes build with (none for forward-only methods).
    pub fn rules(&self) -> Vec<RuleSet> {
        self.run.rules()
    }

    /// The input it starts from when the request sends none ([`Method::own_input`]).
    pub fn own_input(&self, model: &LoadedModel) -> Option<Vec<f32>> {
        self.run.own_input(model)
    }

    pub(super) fn explain(
        &self,
        cx: &mut Cx,
        job: &ExplainJob,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        self.run.explain(cx, job, targets, scores)
    }

    pub(super) fn one_pass(
        &self,
        cx: &mut Cx,
        job: &ExplainJob,
    ) -> Result<Option<(Vec<String>, RuleSet)>, RuntimeError> {
        self.run.one_pass(cx, job)
    }

    pub(super) fn with_scores(&self, job: &ExplainJob) -> Vec<String> {
        self.run.with_scores(job)
    }
}

/// The methods a service offers, by name.
#[derive(Clone, Default)]
pub struct Methods {
    by_name: BTreeMap<&'static str, Arc<dyn AnyMethod>>,
    order: Vec<&'static str>,
}

impl Methods {
    /// Every method explaind ships: one line each.
    pub fn standard() -> Self {
        use super::*;
        Self::default()
            .with::<saliency::Saliency>()
            .with::<gradient_x_input::GradientXInput>()
            .with::<integrated_gradients::IntegratedGradients>()
            .with::<xrai::Xrai>()
            .with::<deeplift::DeepLift>()
            .with::<deeplift_shap::DeepLiftShap>()
            .with::<lrp::Lrp>()
            .with::<pattern_net::PatternNet>()
            .with::<pattern_attribution::PatternAttribution>()
            .with::<extremal::Extremal>()
            .with::<smoothgrad::SmoothGrad>()
            .with::<anchors::Anchors>()
            .with::<counterfactual::Counterfactual>()
            .with::<grad_cam::GradCam>()
            .with::<grad_cam::GradCamPlusPlus>()
            .with::<channel_attribution::ChannelAttribution>()
            .with::<activation_maximisation::ActivationMaximisation>()
            .with::<attention_rollout::AttentionRollout>()
            .with::<transformer_relevance::TransformerRelevance>()
            .with::<guided::GuidedBackprop>()
            .with::<guided::DeconvNet>()
            .with::<guided::GuidedGradCam>()
            .with::<occlusion::Occlusion>()
            .with::<rise::Rise>()
            .with::<d_rise::DRise>()
            .with::<score_cam::ScoreCam>()
            .with::<lime::Lime>()
            .with::<kernel_shap::KernelShap>()
            .with::<sampled_shapley::SampledShapley>()
            .with::<tree_shap::TreeShap>()
            .with::<similar_examples::SimilarExamples>()
            .with::<influence::Influence>()
    }

    /// Adds (or replaces) a method.
    pub fn with<M: Method>(mut self) -> Self {
        if self
            .by_name
            .insert(M::NAME, Arc::new(Registered::<M>(Default::default())))
            .is_none()
        {
            self.order.push(M::NAME);
        }
        self
    }

    /// The method named `name`.
    pub fn get(&self, name: &str) -> Option<&Arc<dyn AnyMethod>> {
        self.by_name.get(name)
    }

    /// Every method, in registration order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<dyn AnyMethod>> {
        self.order.iter().filter_map(|n| self.by_name.get(n))
    }

    /// Every method's name, in registration order.
    pub fn names(&self) -> Vec<&'static str> {
        self.order.clone()
    }
}

/// Refuses, before any work, a method the model cannot serve: the wrong kind of input. (Gradients
/// the model cannot give are refused when the method's parameters are planned, by the rules they
/// ask for.)
pub fn check_applicable(method: &dyn AnyMethod, model: &LoadedModel) -> Result<(), Invalid> {
    let caps = method.capabilities();
    let kind = match (&model.spec.image, &model.spec.tabular) {
        (Some(_), _) => "takes images",
        (None, Some(_)) => "is tabular",
        (None, None) => "takes text",
    };
    if let Some(text) = &model.spec.text {
        if !caps.text {
            return Err(Invalid::Model(format!(
                "{} does not explain text models; `{}` takes text (GET /v1/models/{} lists the methods that do)",
                method.name(),
                model.name,
                model.name
            )));
        }
        if caps.passes == Passes::Gradients {
            if let Some(why) = &text.gradients_refused {
                return Err(Invalid::NotDifferentiable(format!(
                    "model `{}` takes token ids with no embedding lookup to differentiate at, so gradient \
                     methods cannot explain it ({why}); occlusion, lime and kernel-shap can",
                    model.name
                )));
            }
        }
        return Ok(());
    }
    if caps.passes == Passes::Gradients {
        if let Some(refused) = gradients_refused(model) {
            return Err(refused);
        }
    }
    match caps.inputs {
        Inputs::Image if model.spec.image.is_none() => Err(Invalid::Model(format!(
            "{} explains image models; `{}` {kind}",
            method.name(),
            model.name
        ))),
        Inputs::Tabular if model.spec.tabular.is_none() => Err(Invalid::Model(format!(
            "{} explains tabular models; `{}` {kind}",
            method.name(),
            model.name
        ))),
        _ => Ok(()),
    }
}

/// Why no gradient method can explain `model`, whatever its operators: its explained input is not
/// float. The one refusal the model report lists and a request gets (422).
pub fn gradients_refused(model: &LoadedModel) -> Option<Invalid> {
    model.spec.gradients_refused().map(|why| {
        Invalid::NotDifferentiable(format!(
            "gradient methods cannot explain model `{}`: {why}; the perturbation methods can",
            model.name
        ))
    })
}

/// Refuses a model whose report says the rules of `set` cannot explain it, with the report's
/// reasons: the request path meets no refusal the report did not show.
fn check_rules(set: &RuleSet, model: &LoadedModel) -> Result<(), Invalid> {
    if let Some(refused) = gradients_refused(model) {
        return Err(refused);
    }
    let refused = model.gradient_report.get().map(|r| r.refusals(set)).unwrap_or_default();
    if refused.is_empty() {
        return Ok(());
    }
    let what = match set {
        RuleSet::Exact => "gradient methods cannot explain it".to_string(),
        other => format!(
            "the `{}` rules cannot explain it",
            crate::runtime::gradients::family(other)
        ),
    };
    Err(Invalid::NotDifferentiable(format!(
        "model `{}` has operators without gradient rules, so {what}: {}",
        model.name,
        refused.join("; ")
    )))
}
