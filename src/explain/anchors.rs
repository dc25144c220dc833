//! Anchors (Ribeiro et al., AAAI 2018; alibi's AnchorTabular): an if-then rule over the input's
//! features that keeps the model's prediction with precision at least `threshold` and covers as
//! much of the background data as it can.
//!
//! Each feature is discretised into the background data's quartiles (as tabular LIME bins them);
//! the input's bin gives up to two conditions per feature, `f > lower cut` and `f <= upper cut`.
//! A rule's precision is estimated on samples drawn like alibi's: background rows whose anchored
//! features, where they break the rule, are replaced by background values of that feature that
//! keep it. Its coverage is the share of background rows that satisfy it. Rules grow by one
//! condition per round from the `beam_size` best of the last (best by KL-LUCB, Kaufmann and
//! Kalyanakrishnan 2013, to `tau`, with confidence `1 - delta`); a rule is an anchor once its
//! precision's lower confidence bound clears `threshold`, and the anchor with the largest coverage
//! wins. Every sample is a model row; the search stops at the `samples` budget, less a reserve of
//! `2 x batch_size` rows (at least 100, at most a quarter of the budget) on which the chosen
//! rule's precision is estimated afresh (the search's estimate of the rule it picked is biased
//! upwards by the picking).

use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::json;
use utoipa::ToSchema;

use super::background::{all_rows, Bins};
use super::method::{
    bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext, CONFIGURED_MAX_SAMPLES,
    MAX_FEATURES,
};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::runtime::manifest::Task;
use crate::runtime::predict::{decided, probabilities, Prediction};
use crate::runtime::RuntimeError;

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
                .saturating_add(cx.answer_bytes()),
        })
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
        let conditions: Vec<serde_json::Value> = anchor
            .iter()
            .map(|&c| {
                let c = &search.conditions[c];
                json!({
                    "feature": features[c.feature],
                    "op": if c.upper { "<=" } else { ">" },
                    "value": c.cut,
                    "text": format!("{} {} {:.4}", features[c.feature], if c.upper { "<=" } else { ">" }, c.cut),
                })
            })
            .collect();
        let examples = search.examples(anchor, p.examples)?;
        let mut weight = vec![0f64; x.len()];
        for &c in anchor {
            weight[search.conditions[c].feature] = 1.0;
        }
        let details = json!({
            "anchor": conditions,
            "precision": found.precision,
            "precision_samples": found.samples,
            "precision_lower_bound": found.lower,
            "coverage": search.coverage(anchor),
            "meets_threshold": found.valid,
            "threshold": p.threshold,
            "samples": search.used,
            "budget_exhausted": search.used >= p.samples.unwrap_or(100),
            "prediction": {"index": label, "label": job.model.spec.labels.get(label)},
            "examples": examples,
        });
        Ok(targets
            .iter()
            .map(|t| TargetAttribution::from_values(t, &weight, details.clone()))
            .collect())
    }
}

/// `feature <= cut` (upper) or `feature > cut`.
struct Condition {
    feature: usize,
    cut: f32,
    upper: bool,
}

impl Condition {
    fn holds(&self, v: f32) -> bool {
        if self.upper {
            v <= self.cut
        } else {
            v > self.cut
        }
    }
}

/// A rule's precision estimate so far, from samples drawn under that rule only. (alibi also
/// counts its parent rule's samples that satisfy it; those follow the background's joint
/// distribution, not the rule's sampler, and read far more precise than a fresh estimate.)
#[derive(Clone)]
struct Estimate {
    rule: Vec<usize>,
    positives: usize,
    samples: usize,
}

impl Estimate {
    fn new(rule: Vec<usize>) -> Self {
        Estimate {
            rule,
            positives: 0,
            samples: 0,
        }
    }

    fn samples(&self) -> usize {
        self.samples
    }

    fn mean(&self) -> f64 {
        self.positives as f64 / self.samples.max(1) as f64
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
    background: &'a [Vec<f32>],
    x: &'a [f32],
    label: usize,
    conditions: Vec<Condition>,
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
        let n = x.len();
        let mut conditions = Vec::new();
        for (f, &v) in x.iter().enumerate() {
            let column: Vec<f32> = background.iter().filter_map(|r| r.get(f).copied()).collect();
            let bins = Bins::of(&column);
            let b = Bins::bin_of(&bins.cuts, v);
            if b > 0 {
                conditions.push(Condition {
                    feature: f,
                    cut: bins.cuts[b - 1],
                    upper: false,
                });
            }
            if b < bins.cuts.len() {
                conditions.push(Condition {
                    feature: f,
                    cut: bins.cuts[b],
                    upper: true,
                });
            }
        }
        Search {
            cx,
            background,
            x,
            label,
            conditions,
            rng: ChaCha8Rng::seed_from_u64(job.seed),
            used: 0,
            budget: p.samples.unwrap_or(100),
            batch: p.batch_size,
            features: n,
        }
    }

    fn satisfies(&self, rule: &[usize], row: &[f32]) -> bool {
        rule.iter().all(|&c| {
            let c = &self.conditions[c];
            c.holds(row[c.feature])
        })
    }

    /// Share of background rows the rule covers.
    fn coverage(&self, rule: &[usize]) -> f64 {
        let covered = self.background.iter().filter(|r| self.satisfies(rule, r)).count();
        covered as f64 / self.background.len().max(1) as f64
    }

    /// Draws `n` samples under `rule` (alibi's way: background rows, each anchored feature that
    /// breaks the rule replaced by a background value of that feature that keeps it), with
    /// how many the model predicts as the input's class. Fewer when the budget runs out.
    fn sample(&mut self, rule: &[usize], n: usize) -> Result<(usize, usize), RuntimeError> {
        let n = n.min(self.budget.saturating_sub(self.used));
        if n == 0 {
            return Ok((0, 0));
        }
        // Per anchored feature: the background values that keep every condition on it.
        let mut keep: Vec<(usize, Vec<f32>)> = Vec::new();
        for &c in rule {
            let f = self.conditions[c].feature;
            if keep.iter().any(|(g, _)| *g == f) {
                continue;
            }
            let on_f: Vec<&Condition> = rule
                .iter()
                .map(|&c| &self.conditions[c])
                .filter(|c| c.feature == f)
                .collect();
            let values: Vec<f32> = self
                .background
                .iter()
                .map(|r| r[f])
                .filter(|v| on_f.iter().all(|c| c.holds(*v)))
                .collect();
            keep.push((f, values));
        }
        let mut rows: Vec<Vec<f32>> = Vec::with_capacity(n);
        for _ in 0..n {
            let mut row = self.background[self.rng.random_range(0..self.background.len())].clone();
            for (f, values) in &keep {
                let holds = rule
                    .iter()
                    .map(|&c| &self.conditions[c])
                    .filter(|c| c.feature == *f)
                    .all(|c| c.holds(row[*f]));
                if !holds {
                    row[*f] = match values.len() {
                        0 => self.x[*f],
                        k => values[self.rng.random_range(0..k)],
                    };
                }
            }
            rows.push(row);
        }
        self.used += n;
        let positives = self.cx.decide(&rows)?.iter().filter(|(c, _)| *c == self.label).count();
        Ok((positives, n))
    }

    fn draw(&mut self, e: &mut Estimate, n: usize) -> Result<bool, RuntimeError> {
        let (positives, drawn) = self.sample(&e.rule.clone(), n)?;
        e.positives += positives;
        e.samples += drawn;
        Ok(drawn > 0)
    }

    /// KL-LUCB: sample until the `top` best rules by precision are told apart from the rest to
    /// `tau`, or the budget ends. Returns their indices.
    fn best(&mut self, arms: &mut [Estimate], top: usize, p: &AnchorsParams) -> Result<Vec<usize>, RuntimeError> {
        let top = top.min(arms.len());
        let mut t = 1usize;
        loop {
            let mut order: Vec<usize> = (0..arms.len()).collect();
            order.sort_by(|a, b| arms[*a].mean().total_cmp(&arms[*b].mean()));
            let (rest, chosen) = order.split_at(arms.len() - top);
            if rest.is_empty() || self.used >= self.budget {
                return Ok(chosen.to_vec());
            }
            let beta = beta(arms.len(), t, p.delta);
            let ub = |e: &Estimate| upper_bound(e.mean(), beta / e.samples().max(1) as f64);
            let lb = |e: &Estimate| lower_bound(e.mean(), beta / e.samples().max(1) as f64);
            let Some(&ut) = rest.iter().max_by(|a, b| ub(&arms[**a]).total_cmp(&ub(&arms[**b]))) else {
                return Ok(chosen.to_vec());
            };
            let Some(&lt) = chosen.iter().min_by(|a, b| lb(&arms[**a]).total_cmp(&lb(&arms[**b]))) else {
                return Ok(chosen.to_vec());
            };
            if ub(&arms[ut]) - lb(&arms[lt]) <= p.tau {
                return Ok(chosen.to_vec());
            }
            let (a, b) = (ut, lt);
            if !self.draw(&mut arms[a], self.batch)? || !self.draw(&mut arms[b], self.batch)? {
                return Ok(chosen.to_vec());
            }
            t += 1;
        }
    }

    /// alibi's anchor_beam.
    fn run(&mut self, p: &AnchorsParams) -> Result<Found, RuntimeError> {
        let max_size = p.max_anchor_size.unwrap_or(self.features).min(self.features);
        // The answer's precision is estimated afresh on samples held back from the search: the
        // search's own estimate of the rule it picked is biased upwards by the picking.
        let reserve = (2 * p.batch_size).max(100).min(self.budget / 4).max(1);
        let total = self.budget;
        self.budget = total - reserve;
        let mut beam: Vec<Estimate> = vec![Estimate::new(Vec::new())];
        let mut best: Option<(f64, Estimate)> = None;
        // The most precise rule seen, answered when none reaches the threshold.
        let mut fallback: Option<Estimate> = None;
        let eps_stop = 0.05;
        for _ in 0..max_size {
            let mut arms: Vec<Estimate> = Vec::new();
            for parent in &beam {
                for c in 0..self.conditions.len() {
                    if parent
                        .rule
                        .iter()
                        .any(|&r| self.conditions[r].feature == self.conditions[c].feature)
                    {
                        continue;
                    }
                    let mut next = parent.rule.clone();
                    next.push(c);
                    next.sort_unstable();
                    let better = self.coverage(&next) > best.as_ref().map_or(-1.0, |b| b.0);
                    if better && !arms.iter().any(|a| a.rule == next) {
                        arms.push(Estimate::new(next));
                    }
                }
            }
            if arms.is_empty() || self.used >= self.budget {
                break;
            }
            for e in arms.iter_mut() {
                let missing = p.min_samples_start.saturating_sub(e.samples());
                if missing > 0 {
                    self.draw(e, missing)?;
                }
            }
            let chosen = self.best(&mut arms, p.beam_size, p)?;
            let mut next_beam = Vec::new();
            for &i in &chosen {
                let e = &mut arms[i];
                let beta = (1.0 / p.delta).ln();
                let bounds = |e: &Estimate| {
                    let level = beta / e.samples().max(1) as f64;
                    (lower_bound(e.mean(), level), upper_bound(e.mean(), level))
                };
                loop {
                    let (lb, ub) = bounds(e);
                    let m = e.mean();
                    let unsure = (m >= p.threshold && lb < p.threshold - eps_stop)
                        || (m < p.threshold && ub >= p.threshold + eps_stop);
                    if !unsure || !self.draw(e, self.batch)? {
                        break;
                    }
                }
                let (lb, _) = bounds(e);
                let valid = e.mean() >= p.threshold && lb > p.threshold - eps_stop;
                let coverage = self.coverage(&e.rule);
                if valid && best.as_ref().is_none_or(|b| coverage > b.0) {
                    best = Some((coverage, e.clone()));
                } else if !valid && fallback.as_ref().is_none_or(|f| e.mean() > f.mean()) {
                    fallback = Some(e.clone());
                }
                next_beam.push(e.clone());
            }
            beam = next_beam;
        }
        let valid = best.is_some();
        let chosen = match (best, fallback) {
            (Some((_, e)), _) | (None, Some(e)) => e,
            (None, None) => Estimate::new(Vec::new()),
        };
        self.budget = total;
        let mut fresh = Estimate::new(chosen.rule);
        let room = self.budget.saturating_sub(self.used);
        self.draw(&mut fresh, room.min(reserve))?;
        let beta = (1.0 / p.delta).ln();
        Ok(Found {
            precision: fresh.mean(),
            samples: fresh.samples,
            lower: lower_bound(fresh.mean(), beta / fresh.samples.max(1) as f64),
            valid,
            rule: fresh.rule,
        })
    }

    /// Background rows that satisfy `rule`, split by whether the model predicts the input's class
    /// for them: `{same: [{row, values}], different: [...]}`, at most `k` each.
    fn examples(&mut self, rule: &[usize], k: usize) -> Result<serde_json::Value, RuntimeError> {
        if k == 0 {
            return Ok(json!({"same": [], "different": []}));
        }
        let covered: Vec<usize> = (0..self.background.len())
            .filter(|&i| self.satisfies(rule, &self.background[i]))
            .take(k.saturating_mul(10))
            .collect();
        if covered.is_empty() {
            return Ok(json!({"same": [], "different": []}));
        }
        let rows: Vec<Vec<f32>> = covered.iter().map(|&i| self.background[i].clone()).collect();
        let decisions = self.cx.decide(&rows)?;
        let (mut same, mut different) = (Vec::new(), Vec::new());
        for (&i, (predicted, _)) in covered.iter().zip(decisions) {
            let entry = json!({"row": i, "values": self.background[i], "prediction": predicted});
            match predicted == self.label {
                true if same.len() < k => same.push(entry),
                false if different.len() < k => different.push(entry),
                _ => {}
            }
        }
        Ok(json!({"same": same, "different": different}))
    }
}

/// KL-LUCB's exploration rate (Kaufmann and Kalyanakrishnan 2013, as alibi computes it).
fn beta(arms: usize, t: usize, delta: f64) -> f64 {
    let temp = (405.5 * arms as f64 * (t as f64).powf(1.1) / delta).ln();
    temp + temp.ln()
}

/// Bernoulli KL divergence.
fn kl(p: f64, q: f64) -> f64 {
    let p = p.clamp(1e-7, 1.0 - 1e-7);
    let q = q.clamp(1e-7, 1.0 - 1e-7);
    p * (p / q).ln() + (1.0 - p) * ((1.0 - p) / (1.0 - q)).ln()
}

/// The largest q >= p with KL(p, q) <= level (bisection).
fn upper_bound(p: f64, level: f64) -> f64 {
    let (mut lo, mut hi) = (p, 1.0f64);
    for _ in 0..20 {
        let q = (lo + hi) / 2.0;
        if kl(p, q) > level {
            hi = q;
        } else {
            lo = q;
        }
    }
    hi
}

/// The smallest q <= p with KL(p, q) <= level (bisection).
fn lower_bound(p: f64, level: f64) -> f64 {
    let (mut lo, mut hi) = (0.0f64, p);
    for _ in 0..20 {
        let q = (lo + hi) / 2.0;
        if kl(p, q) > level {
            lo = q;
        } else {
            hi = q;
        }
    }
    lo
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kl_bounds_bracket_the_mean_and_tighten_with_samples() {
        for p in [0.0, 0.3, 0.9, 1.0] {
            let (l1, u1) = (lower_bound(p, 1.0 / 10.0), upper_bound(p, 1.0 / 10.0));
            let (l2, u2) = (lower_bound(p, 1.0 / 1000.0), upper_bound(p, 1.0 / 1000.0));
            assert!(l1 <= p + 1e-6 && p <= u1 + 1e-6, "{p}: {l1} {u1}");
            assert!(l2 >= l1 - 1e-6 && u2 <= u1 + 1e-6, "{p}");
            assert!(kl(p, u1) <= 0.1 + 1e-3 && kl(p, l1) <= 0.1 + 1e-3);
        }
    }
}
