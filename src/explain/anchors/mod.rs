//! Anchors (Ribeiro et al., AAAI 2018; alibi's AnchorTabular): an if-then rule over the input's
//! features that keeps the model's prediction with precision at least `threshold` and covers as
//! much of the background data as it can.
//!
//! Each feature is discretised into the background data's quartiles (as tabular LIME bins them);
//! the input's bin gives up to two conditions per feature, `f > lower cut` and `f <= upper cut`.
//! A rule's precision is the share of the model's predictions that keep the input's class on
//! samples from a perturbation distribution conditioned on the rule (Ribeiro et al.'s D(z | A)):
//! background rows with each feature, with probability 1/4, taken from another background row.
//! Because it is a conditioning, a sample drawn under a rule that satisfies one more condition is
//! an exact sample of the longer rule, so every sample serves every rule it is a draw for (the
//! reuse Ribeiro et al. and alibi count on; their samplers force the anchored features instead,
//! under which the reused samples read more precise than fresh ones). Its coverage is the share of
//! background rows that satisfy it. Rules grow by one condition per round from the `beam_size`
//! best of the last (best by KL-LUCB, Kaufmann and Kalyanakrishnan 2013, to `tau`, with
//! confidence `1 - delta`, within a third of the budget left); a rule is an anchor once its
//! precision on samples drawn after it was picked, and on all of its samples, reaches `threshold`
//! (the lower confidence bound within 0.05 of it, as alibi), and the anchor with the largest
//! coverage wins. Every sample is a model row; the search stops at the `samples` budget, less a
//! reserve of `2 x batch_size` rows (at least 100, at most a quarter of the budget) on which the
//! chosen rule's precision is estimated afresh (the answer's `precision`).

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::background::all_rows;
use super::method::{
    bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
    MAX_FEATURES,
};
use super::method::{schemas_of, NamedSchemas};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::runtime::manifest::Task;
use crate::runtime::predict::{decided, probabilities, Prediction};
use crate::runtime::RuntimeError;

mod bounds;
mod sampler;

use bounds::{beta, lower_bound, upper_bound};
use sampler::{mask_of, within, Mask, Sampler};

/// Anchors parameters (alibi's AnchorTabular defaults).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AnchorsParams {
    /// Precision the rule must reach.
    #[schema(default = 0.95, minimum = 0.0, maximum = 1.0)]
    pub threshold: f64,
    /// 1 - confidence of the precision bounds.
    #[schema(default = 0.1, exclusive_minimum = 0.0, maximum = 1.0)]
    pub delta: f64,
    /// KL-LUCB's tolerance when choosing the best rules of a round.
    #[schema(default = 0.15, minimum = 0.0, maximum = 1.0)]
    pub tau: f64,
    /// Samples drawn per rule at a time.
    #[schema(default = 100, minimum = 1, maximum = 1000)]
    pub batch_size: usize,
    /// Rules kept from one round to the next.
    #[schema(default = 1, minimum = 1, maximum = 10)]
    pub beam_size: usize,
    /// Samples every new rule starts with (alibi: 100; 20 here, so the service's default budget
    /// of 4,096 model rows reaches past the first rounds on 30 features).
    #[schema(default = 20, minimum = 1, maximum = 1000)]
    pub min_samples_start: usize,
    /// Most conditions in a rule (default: every feature).
    #[schema(minimum = 1, extensions(("x-maximum" = json!(MAX_FEATURES))))]
    pub max_anchor_size: Option<usize>,
    /// Most model rows the search may run. Default: the service's `max_samples`, at most 20,000.
    #[schema(minimum = 100, extensions(("x-maximum" = json!(CONFIGURED_MAX_SAMPLES))))]
    pub samples: Option<usize>,
    /// Background rows shown that satisfy the rule, per outcome.
    #[schema(default = 10, minimum = 0, maximum = 100)]
    pub examples: usize,
}

impl Default for AnchorsParams {
    fn default() -> Self {
        Self {
            threshold: 0.95,
            delta: 0.1,
            tau: 0.15,
            batch_size: 100,
            beam_size: 1,
            min_samples_start: 20,
            max_anchor_size: None,
            samples: None,
            examples: 10,
        }
    }
}

/// Anchors.
pub struct Anchors;

impl Method for Anchors {
    type Params = AnchorsParams;
    const NAME: &'static str = "anchors";
    const SUMMARY: &'static str =
        "An if-then rule that keeps the prediction with high precision (Ribeiro et al. 2018, KL-LUCB beam search)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::Forward,
        inputs: Inputs::Tabular,
        layer: false,
        random: true,
        examples: false,
        decision: true,
        text: false,
    };

    fn plan(p: &mut AnchorsParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        let model = cx.model;
        if model.spec.task != Task::TabularClassification {
            return Err(Invalid::Model(format!(
                "anchors needs a classifier; `{}` is not a tabular classifier",
                model.name
            )));
        }
        if model.background.as_ref().is_none_or(|rows| rows.len() < 2) {
            return Err(Invalid::Model(format!(
                "anchors samples from background data; model `{}` names none (tabular.background)",
                model.name
            )));
        }
        for (name, v) in [("threshold", p.threshold), ("delta", p.delta), ("tau", p.tau)] {
            if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
                return Err(Invalid::Request(format!("params.{name}: {v} is not in [0, 1]")));
            }
        }
        if p.delta == 0.0 {
            return Err(Invalid::Request("params.delta: must be above 0".into()));
        }
        check_range("batch_size", p.batch_size, 1, 1000)?;
        check_range("beam_size", p.beam_size, 1, 10)?;
        check_range("min_samples_start", p.min_samples_start, 1, 1000)?;
        check_range("examples", p.examples, 0, 100)?;
        let features = cx.input_len();
        let size = p.max_anchor_size.unwrap_or(features);
        check_range("max_anchor_size", size, 1, features.clamp(1, MAX_FEATURES))?;
        p.max_anchor_size = Some(size);
        let samples = p.samples.unwrap_or(cx.limits.max_samples.min(20_000));
        check_range("samples", samples, 100, cx.limits.max_samples.max(100))?;
        p.samples = Some(samples);
        let background = model.background.as_ref().map_or(0, Vec::len);
        Ok(Cost {
            samples,
            rows: samples.saturating_add(p.examples.saturating_mul(10)),
            bytes: bytes(p.batch_size.max(background), 8)
                .saturating_mul(features.saturating_add(cx.classes()) as u64)
                // The sample pool: per sample a bit per condition (two per feature at most) and
                // the rule and outcome it was drawn with.
                .saturating_add(bytes(samples, 8).saturating_mul((features / 32 + 2) as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<AnchorsDetails>())
    }

    fn explain(
        cx: &mut Cx,
        job: &ExplainJob,
        p: &AnchorsParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        let background = all_rows(job)?.to_vec();
        let features = job
            .model
            .spec
            .tabular
            .as_ref()
            .map(|t| t.features.clone())
            .unwrap_or_default();
        let x: Vec<f32> = job.input.as_f32().unwrap_or(&[]).to_vec();
        let label = decided(&probabilities(&job.model, scores), None);
        let mut search = Search::new(cx, job, p, &background, &x, label);
        let found = search.run(p)?;
        let anchor = &found.rule;
        let conditions: Vec<AnchorCondition> = anchor
            .iter()
            .map(|&c| {
                let c = &search.s.conditions[c];
                let op = if c.upper { "<=" } else { ">" };
                AnchorCondition {
                    feature: features[c.feature].clone(),
                    op: op.into(),
                    value: c.cut,
                    text: format!("{} {op} {:.4}", features[c.feature], c.cut),
                }
            })
            .collect();
        let examples = search.examples(anchor, p.examples)?;
        let mut weight = vec![0f64; x.len()];
        for &c in anchor {
            weight[search.s.conditions[c].feature] = 1.0;
        }
        let details = serde_json::to_value(AnchorsDetails {
            anchor: conditions,
            precision: found.precision,
            precision_samples: found.samples,
            precision_lower_bound: found.lower,
            coverage: search.s.coverage(anchor),
            meets_threshold: found.valid,
            threshold: p.threshold,
            samples: search.used,
            budget_exhausted: search.used >= p.samples.unwrap_or(100),
            prediction: DecidedClass {
                index: label,
                label: job.model.spec.labels.get(label).cloned(),
            },
            examples,
        })
        .unwrap_or_default();
        Ok(targets
            .iter()
            .map(|t| TargetAttribution::from_values(t, &weight, details.clone()))
            .collect())
    }
}

/// Each round first samples its beam rules up to this many batches, which every new rule
/// grown from them inherits (the share of them it covers).
const PARENT_BATCHES: usize = 5;

/// A rule under comparison and its precision estimate so far, from every sample that is an exact
/// draw of its sampler: drawn under a sub-rule of it and satisfying it (see [`Search::draw`]).
struct Arm {
    rule: Vec<usize>,
    mask: Mask,
    hits: usize,
    samples: usize,
}

impl Arm {
    fn mean(&self) -> f64 {
        self.hits as f64 / self.samples.max(1) as f64
    }
}

/// The chosen rule and what is known of its precision.
struct Found {
    rule: Vec<usize>,
    precision: f64,
    samples: usize,
    lower: f64,
    valid: bool,
}

struct Search<'a, 'c> {
    cx: &'a mut Cx<'c>,
    s: Sampler<'a>,
    label: usize,
    /// The sample pool: per sample, the rule it was drawn under (index into `drawn`), the
    /// conditions it satisfies (`words` words each) and whether the model kept the input's class.
    drawn: Vec<Mask>,
    under: Vec<u32>,
    holds: Vec<u64>,
    hit: Vec<bool>,
    /// The rules the current round compares; every draw updates those it is a draw for.
    arms: Vec<Arm>,
    rng: ChaCha8Rng,
    used: usize,
    budget: usize,
    batch: usize,
    features: usize,
}

impl<'a, 'c> Search<'a, 'c> {
    fn new(
        cx: &'a mut Cx<'c>,
        job: &'a ExplainJob,
        p: &AnchorsParams,
        background: &'a [Vec<f32>],
        x: &'a [f32],
        label: usize,
    ) -> Self {
        Search {
            cx,
            s: Sampler::new(background, x),
            label,
            drawn: Vec::new(),
            under: Vec::new(),
            holds: Vec::new(),
            hit: Vec::new(),
            arms: Vec::new(),
            rng: ChaCha8Rng::seed_from_u64(job.seed),
            used: 0,
            budget: p.samples.unwrap_or(100),
            batch: p.batch_size,
            features: x.len(),
        }
    }

    /// Draws `n` samples under `rule` (fewer when the budget runs out), runs them and adds them
    /// to the pool; returns how many the model predicts as the input's class, of how many.
    /// Every arm the samples are exact draws for counts them too: a sample drawn under a
    /// sub-rule of the arm's that satisfies the arm's rule (conditioning on more conditions is
    /// conditioning on the sub-rule and then on the rest). So the samples of a round's beam
    /// rules start every rule grown from them, as in Ribeiro et al.'s and alibi's search.
    fn draw(&mut self, rule: &[usize], n: usize) -> Result<(usize, usize), RuntimeError> {
        let n = n.min(self.budget.saturating_sub(self.used));
        if n == 0 {
            return Ok((0, 0));
        }
        let rows = self.s.conditioned(rule, n, &mut self.rng);
        let n = rows.len();
        if n == 0 {
            return Ok((0, 0));
        }
        self.used += n;
        let decided = self.cx.decide(&rows)?;
        let mask = mask_of(rule, self.s.words);
        let under = match self.drawn.iter().position(|m| *m == mask) {
            Some(i) => i,
            None => {
                self.drawn.push(mask.clone());
                self.drawn.len() - 1
            }
        };
        let mut hits = 0;
        for (row, (class, _)) in rows.iter().zip(decided) {
            let held = self.s.held(row);
            let hit = class == self.label;
            hits += usize::from(hit);
            for arm in self.arms.iter_mut() {
                if within(&mask, &arm.mask) && within(&arm.mask, &held) {
                    arm.samples += 1;
                    arm.hits += usize::from(hit);
                }
            }
            self.under.push(under as u32);
            self.holds.extend(held);
            self.hit.push(hit);
        }
        Ok((hits, n))
    }

    /// An arm for `rule`, with every pooled sample that is an exact draw for it.
    fn arm(&self, rule: Vec<usize>) -> Arm {
        let mask = mask_of(&rule, self.s.words);
        let exact: Vec<bool> = self.drawn.iter().map(|d| within(d, &mask)).collect();
        let (mut hits, mut samples) = (0, 0);
        for (i, held) in self.holds.chunks(self.s.words).enumerate() {
            if exact[self.under[i] as usize] && within(&mask, held) {
                samples += 1;
                hits += usize::from(self.hit[i]);
            }
        }
        Arm {
            rule,
            mask,
            hits,
            samples,
        }
    }

    /// KL-LUCB over the round's arms: sample until the `top` best rules by precision are told
    /// apart from the rest to `tau`, or the round's share of the budget (`until` rows used) is
    /// spent; then the best by their estimates. Returns their indices.
    fn best(&mut self, top: usize, p: &AnchorsParams, until: usize) -> Result<Vec<usize>, RuntimeError> {
        let arms = self.arms.len();
        let top = top.min(arms);
        let mut t = 1usize;
        loop {
            let mut order: Vec<usize> = (0..arms).collect();
            order.sort_by(|a, b| self.arms[*a].mean().total_cmp(&self.arms[*b].mean()));
            let (rest, chosen) = order.split_at(arms - top);
            if rest.is_empty() || self.used >= self.budget.min(until) {
                return Ok(chosen.to_vec());
            }
            let beta = beta(arms, t, p.delta);
            let ub = |e: &Arm| upper_bound(e.mean(), beta / e.samples.max(1) as f64);
            let lb = |e: &Arm| lower_bound(e.mean(), beta / e.samples.max(1) as f64);
            let Some(&ut) = rest
                .iter()
                .max_by(|a, b| ub(&self.arms[**a]).total_cmp(&ub(&self.arms[**b])))
            else {
                return Ok(chosen.to_vec());
            };
            let Some(&lt) = chosen
                .iter()
                .min_by(|a, b| lb(&self.arms[**a]).total_cmp(&lb(&self.arms[**b])))
            else {
                return Ok(chosen.to_vec());
            };
            if ub(&self.arms[ut]) - lb(&self.arms[lt]) <= p.tau {
                return Ok(chosen.to_vec());
            }
            let (a, b) = (self.arms[ut].rule.clone(), self.arms[lt].rule.clone());
            if self.draw(&a, self.batch)?.1 == 0 || self.draw(&b, self.batch)?.1 == 0 {
                return Ok(chosen.to_vec());
            }
            t += 1;
        }
    }

    /// alibi's anchor_beam, on a shared sample pool.
    fn run(&mut self, p: &AnchorsParams) -> Result<Found, RuntimeError> {
        let max_size = p.max_anchor_size.unwrap_or(self.features).min(self.features);
        // The answer's precision is estimated afresh on samples held back from the search: the
        // search's own estimate of the rule it picked is biased upwards by the picking.
        let reserve = (2 * p.batch_size).max(100).min(self.budget / 4).max(1);
        let total = self.budget;
        self.budget = total - reserve;
        let mut beam: Vec<Vec<usize>> = vec![Vec::new()];
        // The valid rule of the largest coverage, and the most precise rule seen (answered when
        // none reaches the threshold).
        let mut best: Option<(f64, Vec<usize>)> = None;
        let mut fallback: Option<(f64, Vec<usize>)> = None;
        let eps_stop = 0.05;
        let beta = (1.0 / p.delta).ln();
        for _ in 0..max_size {
            let mut rules: Vec<Vec<usize>> = Vec::new();
            for parent in &beam {
                for c in 0..self.s.conditions.len() {
                    if parent
                        .iter()
                        .any(|&r| self.s.conditions[r].feature == self.s.conditions[c].feature)
                    {
                        continue;
                    }
                    let mut next = parent.clone();
                    next.push(c);
                    next.sort_unstable();
                    let better = self.s.coverage(&next) > best.as_ref().map_or(-1.0, |b| b.0);
                    if better && !rules.contains(&next) {
                        rules.push(next);
                    }
                }
            }
            if rules.is_empty() || self.used >= self.budget {
                break;
            }
            // A round may spend a third of what is left, so that later (longer, usually more
            // precise) rules get their turn: KL-LUCB to `tau` over some 45 rules of similar
            // precision would spend 4,096 rows on the first round alone.
            let until = self.used + (self.budget - self.used).div_ceil(3);
            self.arms.clear();
            for rule in rules {
                self.cx.checkpoint()?;
                let arm = self.arm(rule);
                self.arms.push(arm);
            }
            let top_up = (PARENT_BATCHES * self.batch).min((self.budget - self.used) / 6);
            for parent in beam.clone() {
                let have = self.arm(parent.clone()).samples;
                if have < top_up {
                    self.draw(&parent, top_up - have)?;
                }
            }
            for i in 0..self.arms.len() {
                let missing = p.min_samples_start.saturating_sub(self.arms[i].samples);
                if missing > 0 {
                    let rule = self.arms[i].rule.clone();
                    self.draw(&rule, missing)?;
                }
            }
            let chosen = self.best(p.beam_size, p, until)?;
            let mut next_beam = Vec::new();
            for i in chosen {
                let rule = self.arms[i].rule.clone();
                // Whether it is an anchor is judged on samples drawn after the picking (which
                // favours the rules whose estimates ran high), and on all of its samples.
                let (mut hits, mut drawn) = (0, 0);
                loop {
                    let m = hits as f64 / drawn.max(1) as f64;
                    let level = beta / drawn.max(1) as f64;
                    let (lb, ub) = (lower_bound(m, level), upper_bound(m, level));
                    let unsure = drawn == 0
                        || (m >= p.threshold && lb < p.threshold - eps_stop)
                        || (m < p.threshold && ub >= p.threshold + eps_stop);
                    if !unsure {
                        break;
                    }
                    let (h, n) = self.draw(&rule, self.batch)?;
                    if n == 0 {
                        break;
                    }
                    hits += h;
                    drawn += n;
                }
                let m = hits as f64 / drawn.max(1) as f64;
                let lb = lower_bound(m, beta / drawn.max(1) as f64);
                let pooled = self.arms[i].mean();
                let valid = drawn > 0 && m >= p.threshold && lb > p.threshold - eps_stop && pooled >= p.threshold;
                let coverage = self.s.coverage(&rule);
                if valid && best.as_ref().is_none_or(|b| coverage > b.0) {
                    best = Some((coverage, rule.clone()));
                } else if !valid && fallback.as_ref().is_none_or(|f| pooled > f.0) {
                    fallback = Some((pooled, rule.clone()));
                }
                next_beam.push(rule);
            }
            beam = next_beam;
        }
        self.arms.clear();
        let valid = best.is_some();
        let chosen = match (best, fallback) {
            (Some((_, rule)), _) | (None, Some((_, rule))) => rule,
            (None, None) => Vec::new(),
        };
        self.budget = total;
        let room = self.budget.saturating_sub(self.used);
        let (hits, samples) = self.draw(&chosen, room.min(reserve))?;
        let precision = hits as f64 / samples.max(1) as f64;
        Ok(Found {
            precision,
            samples,
            lower: lower_bound(precision, beta / samples.max(1) as f64),
            valid,
            rule: chosen,
        })
    }

    /// Background rows that satisfy `rule`, split by whether the model predicts the input's class
    /// for them: `{same: [{row, values}], different: [...]}`, at most `k` each.
    fn examples(&mut self, rule: &[usize], k: usize) -> Result<CoveredRows, RuntimeError> {
        let (mut same, mut different) = (Vec::new(), Vec::new());
        if k == 0 {
            return Ok(CoveredRows { same, different });
        }
        let covered: Vec<usize> = (0..self.s.background.len())
            .filter(|&i| self.s.satisfies(rule, &self.s.background[i]))
            .take(k.saturating_mul(10))
            .collect();
        if covered.is_empty() {
            return Ok(CoveredRows { same, different });
        }
        let rows: Vec<Vec<f32>> = covered.iter().map(|&i| self.s.background[i].clone()).collect();
        let decisions = self.cx.decide(&rows)?;
        for (&i, (predicted, _)) in covered.iter().zip(decisions) {
            let entry = CoveredRow {
                row: i,
                values: self.s.background[i].clone(),
                prediction: predicted,
            };
            match predicted == self.label {
                true if same.len() < k => same.push(entry),
                false if different.len() < k => different.push(entry),
                _ => {}
            }
        }
        Ok(CoveredRows { same, different })
    }
}

/// Anchors' `details`: the rule, its precision and coverage, and background rows it covers.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnchorsDetails {
    /// The rule's conditions.
    pub anchor: Vec<AnchorCondition>,
    /// Share of samples under the rule that keep the prediction.
    pub precision: f64,
    /// Samples that estimate `precision`.
    pub precision_samples: usize,
    /// The lower confidence bound of `precision`.
    pub precision_lower_bound: f64,
    /// Share of the background rows the rule covers.
    pub coverage: f64,
    /// Whether the lower bound reaches `threshold`.
    pub meets_threshold: bool,
    /// The precision asked for.
    pub threshold: f64,
    /// Model rows sampled.
    pub samples: usize,
    /// Whether the sample budget ran out.
    pub budget_exhausted: bool,
    /// The decision the rule keeps.
    pub prediction: DecidedClass,
    /// Background rows the rule covers, by whether the model decides as for the input.
    pub examples: CoveredRows,
}

/// One condition of an anchor.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AnchorCondition {
    /// The feature.
    pub feature: String,
    /// `<=` or `>`.
    #[schema(pattern = "^(<=|>)$")]
    pub op: String,
    /// The cut.
    pub value: f32,
    /// The condition as text.
    pub text: String,
}

/// A class the model decides.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DecidedClass {
    /// Its index.
    pub index: usize,
    /// Its label.
    pub label: Option<String>,
}

/// Background rows an anchor covers.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoveredRows {
    /// Rows the model decides as it decides the input.
    pub same: Vec<CoveredRow>,
    /// Rows it decides otherwise.
    pub different: Vec<CoveredRow>,
}

/// A background row.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CoveredRow {
    /// Its index in the background data.
    pub row: usize,
    /// Its values.
    pub values: Vec<f32>,
    /// The class the model decides for it.
    pub prediction: usize,
}
