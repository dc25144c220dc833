//! Exact TreeSHAP for ONNX-ML tree ensembles (Lundberg et al. 2018 and 2020), in the ensemble's raw
//! output space (before `post_transform`: log-odds for boosted classifiers, averaged leaf
//! probabilities for random forests). Two games, as shap's TreeExplainer offers:
//! - `interventional`: missing features take a background row's values; the exact Shapley values
//!   of that game, averaged over the (k-means summarised) background rows. Needs only the trees.
//! - `tree_path_dependent`: missing features follow the training data's split proportions (node
//!   covers); the polynomial-time path algorithm. Converters rarely record covers (`nodes_hitrates`
//!   is all ones from skl2onnx), so without them the covers are counted from the background rows.
//!
//! No model passes: the trees are read from the graph; the raw scores are checked against ONNX
//! Runtime's output where its post-transform is known, so a misread model fails loudly.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::background;
use super::method::{bytes, check_range, Capabilities, Cost, Inputs, Invalid, Method, Passes, PlanContext};
use super::method::{schemas_of, NamedSchemas};
use super::{Cx, ExplainJob, TargetAttribution};
use crate::onnx::trees::Forest;
use crate::runtime::predict::Prediction;
use crate::runtime::preprocess::InputError;
use crate::runtime::RuntimeError;

mod interventional;
mod path_dependent;

use interventional::interventional;
use path_dependent::{counted_covers, path_dependent};

/// Which game's Shapley values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum FeaturePerturbation {
    /// Missing features take background rows' values (needs the manifest's background data).
    Interventional,
    /// Missing features follow the node covers.
    TreePathDependent,
}

/// TreeSHAP parameters.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct TreeShapParams {
    /// Default: `interventional` when the model has background data, else `tree_path_dependent`.
    pub feature_perturbation: Option<FeaturePerturbation>,
    /// Background rows (k-means summary beyond this; shap warns above 100).
    #[schema(default = 100, minimum = 1, maximum = 1000)]
    pub background_rows: usize,
}

impl Default for TreeShapParams {
    fn default() -> Self {
        Self {
            feature_perturbation: None,
            background_rows: 100,
        }
    }
}

impl TreeShapParams {
    /// The game played: the one asked for, else `interventional` when there is background data.
    pub fn game(&self, has_background: bool) -> FeaturePerturbation {
        self.feature_perturbation.unwrap_or(if has_background {
            FeaturePerturbation::Interventional
        } else {
            FeaturePerturbation::TreePathDependent
        })
    }
}

/// TreeSHAP.
pub struct TreeShap;

impl Method for TreeShap {
    type Params = TreeShapParams;
    const NAME: &'static str = "tree-shap";
    const SUMMARY: &'static str = "Exact Shapley values of ONNX-ML tree ensembles (Lundberg et al. 2020)";
    const CAPABILITIES: Capabilities = Capabilities {
        passes: Passes::None,
        inputs: Inputs::Tabular,
        layer: false,
        random: false,
        examples: false,
        decision: false,
        text: false,
        makes_image: false,
    };

    fn plan(p: &mut TreeShapParams, cx: &PlanContext) -> Result<Cost, Invalid> {
        check_range("background_rows", p.background_rows, 1, 1000)?;
        let model = cx.model;
        // Decoded once per model (at start), so this is a lookup.
        let forest = model
            .forest()
            .map_err(|why| Invalid::Unsupported(format!("tree-shap cannot explain model `{}`: {why}", model.name)))?;
        p.feature_perturbation = Some(p.game(model.background.is_some()));
        let nodes: usize = forest.trees.iter().map(|t| t.nodes.len()).sum();
        let background = model.background.as_ref().map_or(0, |rows| rows.len());
        Ok(Cost {
            samples: 0,
            rows: 0,
            bytes: bytes(background.saturating_add(p.background_rows), 4)
                .saturating_mul(cx.input_len() as u64)
                .saturating_add(bytes(nodes, 64))
                .saturating_add(bytes(cx.input_len(), 8).saturating_mul(cx.classes() as u64))
                .saturating_add(cx.answer_bytes()),
        })
    }

    fn details_schema() -> Option<NamedSchemas> {
        Some(schemas_of::<TreeShapDetails>())
    }

    fn explain(
        _: &mut Cx,
        job: &ExplainJob,
        p: &TreeShapParams,
        targets: &[Prediction],
        scores: &[f64],
    ) -> Result<Vec<TargetAttribution>, RuntimeError> {
        explain(job, p, targets, scores)
    }
}

/// Per feature, per raw column: the Shapley values; and per column the base value.
pub struct Values {
    pub phi: Vec<Vec<f64>>,
    pub base: Vec<f64>,
}

fn explain(
    job: &ExplainJob,
    p: &TreeShapParams,
    targets: &[Prediction],
    scores: &[f64],
) -> Result<Vec<TargetAttribution>, RuntimeError> {
    let forest = job.model.forest().map_err(unsupported)?;
    let x = job.input.as_f32().unwrap_or(&[]).to_vec();
    if forest.features > x.len() {
        return Err(unsupported(format!(
            "the trees read feature {} of an input with {}",
            forest.features - 1,
            x.len()
        )));
    }
    let raw = forest.raw(&x);
    let checked = check_against_runtime(job, &forest, &raw, scores)?;
    let perturbation = p.game(job.model.background.is_some());
    let game = play(job, p, perturbation, &forest, &x)?;
    let mut out = Vec::with_capacity(targets.len());
    for t in targets {
        let (col, sign, offset) = forest
            .class_column(t.index)
            .ok_or_else(|| unsupported(format!("the ensemble has no raw score for class {}", t.index)))?;
        let phi: Vec<f64> = game.values.phi.iter().map(|f| sign * f[col]).collect();
        let base = offset + sign * game.values.base[col];
        let value = offset + sign * raw[col];
        let details = TreeShapDetails {
            efficiency_gap: phi.iter().sum::<f64>() - (value - base),
            shapley_values: phi.clone(),
            base_value: base,
            value,
            output_space: "raw".into(),
            post_transform: format!("{:?}", forest.post_transform).to_uppercase(),
            feature_perturbation: perturbation,
            background: game.background.clone(),
            covers: game.covers.map(String::from),
            trees: forest.trees.len(),
            checked_against_runtime: checked,
        };
        out.push(TargetAttribution::from_values(
            t,
            &phi,
            serde_json::to_value(details).unwrap_or_default(),
        ));
    }
    Ok(out)
}

/// A model TreeSHAP cannot read, said as a wrong-kind input.
fn unsupported(m: String) -> RuntimeError {
    RuntimeError::from(InputError::WrongKind(format!("tree-shap: {m}")))
}

/// Whether the trees' raw scores, post-transformed, were checked against ONNX Runtime's `scores`
/// (false where the post transform is unknown); a disagreement fails the job.
fn check_against_runtime(job: &ExplainJob, forest: &Forest, raw: &[f64], scores: &[f64]) -> Result<bool, RuntimeError> {
    let Some(expected) = forest.transformed(raw) else {
        return Ok(false);
    };
    let gap = expected
        .iter()
        .zip(scores)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    if expected.len() != scores.len() || gap > 1e-4 {
        return Err(RuntimeError::Inference {
            model: job.model.name.clone(),
            message: format!(
                "TreeSHAP's reading of node `{}` disagrees with ONNX Runtime's output by {gap:.3e}",
                forest.node
            ),
        });
    }
    Ok(true)
}

/// One game's values, with the background rows and the covers' source it used.
struct Game {
    values: Values,
    background: Option<background::BackgroundDetails>,
    covers: Option<&'static str>,
}

/// Plays `perturbation`'s game on `x`: interventional over background rows, or path-dependent over
/// the model's covers or covers counted from the background.
fn play(
    job: &ExplainJob,
    p: &TreeShapParams,
    perturbation: FeaturePerturbation,
    forest: &Forest,
    x: &[f32],
) -> Result<Game, RuntimeError> {
    Ok(match perturbation {
        FeaturePerturbation::Interventional => {
            let (bg, of) = background::for_job(job, p.background_rows)?;
            Game {
                values: interventional(forest, x, &bg),
                background: Some(bg.describe(of)),
                covers: None,
            }
        }
        FeaturePerturbation::TreePathDependent if forest.has_covers => {
            let covers: Vec<Vec<f64>> = forest
                .trees
                .iter()
                .map(|t| t.nodes.iter().map(|n| n.cover).collect())
                .collect();
            Game {
                values: path_dependent(forest, &covers, x),
                background: None,
                covers: Some("model (nodes_hitrates)"),
            }
        }
        FeaturePerturbation::TreePathDependent if job.model.background.is_some() => {
            let (bg, of) = background::for_job(job, usize::MAX)?;
            let covers = counted_covers(forest, &bg);
            Game {
                values: path_dependent(forest, &covers, x),
                background: Some(bg.describe(of)),
                covers: Some("background rows"),
            }
        }
        FeaturePerturbation::TreePathDependent => {
            return Err(unsupported(
                "tree_path_dependent needs node covers: the model records none (nodes_hitrates) and names no \
                 background data to count them from"
                    .into(),
            ))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::background::Background;
    use crate::onnx::trees::{Mode, Node, PostTransform, Split, Tree};

    /// f = 1[x0 <= 0.5] * (1[x1 <= 0.5] * 4 + 2) + 1, one tree; covers as given.
    fn forest(covers: [f64; 5]) -> Forest {
        let split = |feature, yes, no| {
            Some(Split {
                feature,
                threshold: 0.5,
                mode: Mode::Leq,
                yes,
                no,
                missing_yes: false,
            })
        };
        let leaf = |v: f64| (None, vec![v]);
        let parts = [
            (split(0, 1, 2), vec![]),
            (split(1, 3, 4), vec![]),
            leaf(0.0),
            leaf(6.0),
            leaf(2.0),
        ];
        let nodes = parts
            .into_iter()
            .zip(covers)
            .map(|((split, values), cover)| Node { split, values, cover })
            .collect();
        Forest {
            trees: vec![Tree { nodes }],
            columns: 1,
            base: vec![1.0],
            post_transform: PostTransform::None,
            binary: None,
            features: 2,
            has_covers: true,
            node: "t".into(),
        }
    }

    /// Exact Shapley values by enumeration of a 2-player game.
    fn shapley2(v: impl Fn(bool, bool) -> f64) -> [f64; 2] {
        [
            0.5 * (v(true, false) - v(false, false)) + 0.5 * (v(true, true) - v(false, true)),
            0.5 * (v(false, true) - v(false, false)) + 0.5 * (v(true, true) - v(true, false)),
        ]
    }

    #[test]
    fn interventional_matches_enumeration_for_every_background_row() {
        let f = forest([1.0; 5]);
        let x = [0.0f32, 1.0];
        for z in [[1.0f32, 0.0], [0.0, 0.0], [1.0, 1.0]] {
            let bg = Background {
                rows: vec![z.to_vec()],
                weights: vec![1.0],
                summary: "all rows",
            };
            let got = interventional(&f, &x, &bg);
            let eval = |a: bool, b: bool| f.raw(&[if a { x[0] } else { z[0] }, if b { x[1] } else { z[1] }])[0];
            let want = shapley2(eval);
            for j in 0..2 {
                assert!(
                    (got.phi[j][0] - want[j]).abs() < 1e-12,
                    "z {z:?}: {:?} vs {want:?}",
                    got.phi
                );
            }
            assert!((got.base[0] - f.raw(&z)[0]).abs() < 1e-12);
        }
    }

    #[test]
    fn path_dependent_matches_enumeration_of_the_cover_weighted_game() {
        // Covers: root 10, left 6 (of which 2 go to x1 <= .5), right 4.
        let covers = [10.0, 6.0, 4.0, 2.0, 4.0];
        let f = forest(covers);
        let x = [0.0f32, 1.0];
        // E[f | features in S fixed to x] with covers: average over unknown branches by cover.
        let eval = |a: bool, b: bool| -> f64 {
            let inner = if b { 2.0 } else { (2.0 * 6.0 + 4.0 * 2.0) / 6.0 };
            let left = inner;
            1.0 + if a { left } else { (6.0 * left + 4.0 * 0.0) / 10.0 }
        };
        let want = shapley2(eval);
        let all: Vec<Vec<f64>> = vec![covers.to_vec()];
        let got = path_dependent(&f, &all, &x);
        for j in 0..2 {
            assert!((got.phi[j][0] - want[j]).abs() < 1e-12, "{:?} vs {want:?}", got.phi);
        }
        assert!((got.base[0] - eval(false, false)).abs() < 1e-12);
    }
}

/// TreeSHAP's `details`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TreeShapDetails {
    /// One value per feature, in the ensemble's raw score.
    pub shapley_values: Vec<f64>,
    /// The expected raw score.
    pub base_value: f64,
    /// The input's raw score.
    pub value: f64,
    /// The values' sum minus (`value` - `base_value`): zero up to rounding.
    pub efficiency_gap: f64,
    /// Always `raw`: the ensemble's score before its post transform.
    pub output_space: String,
    /// The ensemble's post transform (`NONE`, `SOFTMAX`, `LOGISTIC`, ...).
    pub post_transform: String,
    /// The game played.
    pub feature_perturbation: FeaturePerturbation,
    /// The background rows (interventional; tree-path-dependent with covers counted from them).
    pub background: Option<background::BackgroundDetails>,
    /// Where the node covers came from (tree-path-dependent).
    pub covers: Option<String>,
    /// Trees in the ensemble.
    pub trees: usize,
    /// Whether the raw scores were checked against ONNX Runtime's.
    pub checked_against_runtime: bool,
}
