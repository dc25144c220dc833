//! Anchors' beam search: rules grown a condition per round, compared by KL-LUCB on a shared
//! sample pool, the chosen rule's precision estimated afresh on a held-back reserve.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use super::bounds::{beta, lower_bound, upper_bound};
use super::sampler::{mask_of, within, Mask, Sampler};
use super::{AnchorsParams, CoveredRow, CoveredRows};
use crate::explain::{Cx, ExplainJob};
use crate::runtime::RuntimeError;

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
pub(super) struct Found {
    pub(super) rule: Vec<usize>,
    pub(super) precision: f64,
    pub(super) samples: usize,
    pub(super) lower: f64,
    pub(super) valid: bool,
}

/// The beam search's state: the sampler, the shared sample pool, the round's arms and the budget.
pub(super) struct Search<'a, 'c> {
    cx: &'a mut Cx<'c>,
    pub(super) s: Sampler<'a>,
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
    pub(super) used: usize,
    budget: usize,
    batch: usize,
    features: usize,
}

impl<'a, 'c> Search<'a, 'c> {
    pub(super) fn new(
        cx: &'a mut Cx<'c>,
        job: &'a ExplainJob,
        p: &AnchorsParams,
        background: &'a [Vec<f32>],
        x: &'a [f32],
        label: usize,
    ) -> Self {
        Search {
            cx,
            s: Sampler::new(
                background,
                x,
                job.model
                    .spec
                    .tabular
                    .as_ref()
                    .map(|t| t.feature_types.as_slice())
                    .unwrap_or_default(),
            ),
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
    pub(super) fn run(&mut self, p: &AnchorsParams) -> Result<Found, RuntimeError> {
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
        let beta = (1.0 / p.delta).ln();
        for _ in 0..max_size {
            let rules = self.grown(&beam, best.as_ref().map_or(-1.0, |b| b.0));
            if rules.is_empty() || self.used >= self.budget {
                break;
            }
            // A round may spend a third of what is left, so that later (longer, usually more
            // precise) rules get their turn: KL-LUCB to `tau` over some 45 rules of similar
            // precision would spend 4,096 rows on the first round alone.
            let until = self.used + (self.budget - self.used).div_ceil(3);
            self.open_round(rules, &beam, p)?;
            let chosen = self.best(p.beam_size, p, until)?;
            let mut next_beam = Vec::new();
            for i in chosen {
                let rule = self.arms[i].rule.clone();
                let judged = self.is_anchor(&rule, p, beta)?;
                // Read after the judging: its draws count for this arm too.
                let pooled = self.arms[i].mean();
                let valid = judged && pooled >= p.threshold;
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

    /// The beam's rules each grown by one condition on a feature they do not yet name, keeping
    /// only those that could cover more than the best anchor so far (`coverage`).
    fn grown(&self, beam: &[Vec<usize>], coverage: f64) -> Vec<Vec<usize>> {
        let mut rules: Vec<Vec<usize>> = Vec::new();
        for parent in beam {
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
                if self.s.coverage(&next) > coverage && !rules.contains(&next) {
                    rules.push(next);
                }
            }
        }
        rules
    }

    /// Makes `rules` the round's arms: the beam's rules topped up first (their samples count for
    /// every rule grown from them), then each arm to `min_samples_start`.
    fn open_round(
        &mut self,
        rules: Vec<Vec<usize>>,
        beam: &[Vec<usize>],
        p: &AnchorsParams,
    ) -> Result<(), RuntimeError> {
        self.arms.clear();
        for rule in rules {
            self.cx.checkpoint()?;
            let arm = self.arm(rule);
            self.arms.push(arm);
        }
        let top_up = (PARENT_BATCHES * self.batch).min((self.budget - self.used) / 6);
        for parent in beam {
            let have = self.arm(parent.clone()).samples;
            if have < top_up {
                self.draw(parent, top_up - have)?;
            }
        }
        for i in 0..self.arms.len() {
            let missing = p.min_samples_start.saturating_sub(self.arms[i].samples);
            if missing > 0 {
                let rule = self.arms[i].rule.clone();
                self.draw(&rule, missing)?;
            }
        }
        Ok(())
    }

    /// Whether `rule` is an anchor, judged on samples drawn after the picking (which favours the
    /// rules whose estimates ran high): drawn until its precision is known to lie on one side of
    /// `threshold` (within 0.05, as alibi) or the budget runs out.
    fn is_anchor(&mut self, rule: &[usize], p: &AnchorsParams, beta: f64) -> Result<bool, RuntimeError> {
        let eps_stop = 0.05;
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
            let (h, n) = self.draw(rule, self.batch)?;
            if n == 0 {
                break;
            }
            hits += h;
            drawn += n;
        }
        let m = hits as f64 / drawn.max(1) as f64;
        let lb = lower_bound(m, beta / drawn.max(1) as f64);
        Ok(drawn > 0 && m >= p.threshold && lb > p.threshold - eps_stop)
    }

    /// Background rows that satisfy `rule`, split by whether the model predicts the input's class
    /// for them: `{same: [{row, values}], different: [...]}`, at most `k` each.
    pub(super) fn examples(&mut self, rule: &[usize], k: usize) -> Result<CoveredRows, RuntimeError> {
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
