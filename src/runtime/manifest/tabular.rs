//! `[tabular]`: feature names, background data and the counterfactual constraints, which a request
//! may tighten but never relax.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, ManifestError, Task};
use crate::onnx::{Dim, TensorInfo};
use crate::runtime::tensor::ElementType;

/// The `[tabular]` section as written.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct TabularManifest {
    features: Option<Vec<String>>,
    background: Option<String>,
    constraints: Option<Constraints>,
    descriptions: Option<BTreeMap<String, String>>,
    types: Option<BTreeMap<String, TypeManifest>>,
}

impl TabularManifest {
    /// True when the section declares feature types.
    pub(super) fn has_types(&self) -> bool {
        self.types.as_ref().is_some_and(|t| !t.is_empty())
    }
}

/// A feature's type as written: `"integer"`, `"continuous"`, or a table of categories.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum TypeManifest {
    Named(String),
    Categorical {
        categories: Vec<f64>,
        names: Option<Vec<String>>,
    },
}

/// What values a feature takes: what perturbations draw and counterfactuals move it to.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum FeatureType {
    /// Any number.
    Continuous,
    /// Whole numbers.
    Integer,
    /// One of `categories`: the values the model sees, in order, with display names when given.
    Categorical {
        /// The values the model sees.
        categories: Vec<f64>,
        /// A display name per category.
        #[serde(skip_serializing_if = "Vec::is_empty")]
        names: Vec<String>,
    },
}

impl FeatureType {
    /// Why `v` is not a value of this type (`range`: the whole numbers the input's element type
    /// holds, for an integer input), or `None` when it is one.
    pub fn refuses(&self, v: f64, range: Option<(f64, f64)>) -> Option<String> {
        match self {
            FeatureType::Categorical { categories, names } => (!categories.contains(&v)).then(|| {
                let shown: Vec<String> = categories
                    .iter()
                    .enumerate()
                    .take(20)
                    .map(|(i, c)| match names.get(i) {
                        Some(n) => format!("{c} ({n})"),
                        None => c.to_string(),
                    })
                    .collect();
                format!("{v} is not one of its categories: {}", shown.join(", "))
            }),
            FeatureType::Integer | FeatureType::Continuous => {
                let whole = *self == FeatureType::Integer || range.is_some();
                if whole && v.fract() != 0.0 {
                    return Some(format!("{v} is not a whole number (the feature is integer)"));
                }
                match range {
                    Some((lo, hi)) if v < lo || v > hi => Some(format!("{v} is out of the input's range [{lo}, {hi}]")),
                    _ => None,
                }
            }
        }
    }
}

/// Input of a tabular model, resolved.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct TabularSpec {
    /// Feature names in input order.
    pub features: Vec<String>,
    /// Background data file (CSV) next to the model, when one is named.
    pub background: Option<String>,
    /// What counterfactuals may change (`[tabular.constraints]`); its `integer` list is every
    /// integer feature of `types`.
    pub constraints: Constraints,
    /// The features that are not continuous, by name, with their type (`[tabular.types]`, and
    /// every feature of an integer or bool input).
    pub types: BTreeMap<String, FeatureType>,
    /// Each feature's type, in feature order.
    #[serde(skip)]
    #[schema(ignore)]
    pub feature_types: Vec<FeatureType>,
    /// The whole numbers the explained input's element type holds (integer and bool inputs).
    #[serde(skip)]
    #[schema(ignore)]
    pub range: Option<(f64, f64)>,
    /// Plain-language descriptions of features, by name (`descriptions`), for decision reports.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub descriptions: BTreeMap<String, String>,
    /// Several explained inputs: each one's columns of the features (empty for one input).
    #[serde(skip)]
    #[schema(ignore)]
    pub blocks: Vec<crate::onnx::join::Block>,
}

/// Completes the `[tabular]` section from the graph: the input must be 2-D, a regression output
/// one value per row, and the feature names (`f0`, `f1`, ... by default) one per input column.
pub(super) fn resolve(
    m: TabularManifest,
    task: Task,
    (input, dtype): (&TensorInfo, ElementType),
    output: &TensorInfo,
    blocks: &[crate::onnx::join::Block],
    err: &FieldError,
) -> Result<TabularSpec, ManifestError> {
    let input_shape: &[Dim] = input.shape.as_deref().unwrap_or_default();
    if !input_shape.is_empty() && input_shape.len() != 2 {
        return Err(err(
            "input",
            format!(
                "a tabular input must be 2-D [batch, features]; `{}` has {} dimensions",
                input.name,
                input_shape.len()
            ),
        ));
    }
    let classes = super::class_count(output);
    if task == Task::TabularRegression && classes.is_some_and(|n| n != 1) {
        return Err(err(
            "output",
            format!(
                "a regression output holds one value per row; `{}` holds {}",
                output.name,
                classes.unwrap_or(0)
            ),
        ));
    }
    let count = input_shape.get(1).and_then(Dim::fixed);
    let features = match (m.features, count) {
        (Some(f), Some(n)) if f.len() != n => {
            return Err(err(
                "tabular.features",
                format!("{} names, but input `{}` takes {n} features", f.len(), input.name),
            ))
        }
        (Some(f), _) => f,
        // Several explained inputs: each feature named after its input.
        (None, Some(_)) if !blocks.is_empty() => blocks
            .iter()
            .flat_map(|b| (0..b.len).map(move |i| format!("{}[{i}]", b.name)))
            .collect(),
        (None, Some(n)) => (0..n).map(|i| format!("f{i}")).collect(),
        (None, None) => {
            return Err(err(
                "tabular.features",
                "missing, and the input's feature count is not fixed in the graph".into(),
            ))
        }
    };
    let mut constraints = m.constraints.unwrap_or_default();
    constraints
        .check(&features)
        .map_err(|why| err("tabular.constraints", why))?;
    let feature_types = feature_types(m.types.unwrap_or_default(), &features, &constraints.integer, dtype, err)?;
    // One source of truth: the types. The constraint lists the integer features, whether the
    // manifest declared them there or as types.
    constraints.integer = features
        .iter()
        .zip(&feature_types)
        .filter(|(_, t)| **t == FeatureType::Integer)
        .map(|(f, _)| f.clone())
        .collect();
    let descriptions = m.descriptions.unwrap_or_default();
    let unknown: Vec<&str> = descriptions
        .keys()
        .filter(|name| !features.contains(name))
        .map(String::as_str)
        .collect();
    if !unknown.is_empty() {
        return Err(err(
            "tabular.descriptions",
            format!("unknown features: {}", unknown.join(", ")),
        ));
    }
    Ok(TabularSpec {
        types: features
            .iter()
            .zip(&feature_types)
            .filter(|(_, t)| **t != FeatureType::Continuous)
            .map(|(f, t)| (f.clone(), t.clone()))
            .collect(),
        features,
        background: m.background,
        constraints,
        feature_types,
        range: dtype.integer_range(),
        descriptions,
        blocks: blocks.to_vec(),
    })
}

/// Each feature's type: as `[tabular.types]` declares it; integer when `[tabular.constraints]`
/// lists it so; else continuous for a float input, integer for an integer one and categorical
/// 0 / 1 for a bool one. A continuous feature of a non-float input, a category its input cannot
/// hold, and a type for an unknown feature are refused.
fn feature_types(
    declared: BTreeMap<String, TypeManifest>,
    features: &[String],
    integer: &[String],
    dtype: ElementType,
    err: &FieldError,
) -> Result<Vec<FeatureType>, ManifestError> {
    if let Some(unknown) = declared.keys().find(|k| !features.contains(k)) {
        return Err(err(&format!("tabular.types.{unknown}"), "no such feature".into()));
    }
    let range = dtype.integer_range();
    let mut out = Vec::with_capacity(features.len());
    for f in features {
        let field = format!("tabular.types.{f}");
        let t = match declared.get(f) {
            Some(TypeManifest::Named(n)) => match n.as_str() {
                "integer" => FeatureType::Integer,
                "continuous" if range.is_none() => FeatureType::Continuous,
                "continuous" => {
                    return Err(err(
                        &field,
                        format!("the input is {}: its features are whole numbers", dtype.name()),
                    ))
                }
                other => {
                    return Err(err(
                        &field,
                        format!("unknown type `{other}`: integer, continuous, or a table with categories"),
                    ))
                }
            },
            Some(TypeManifest::Categorical { categories, names }) => {
                let names = names.clone().unwrap_or_default();
                if categories.is_empty() {
                    return Err(err(&field, "categories: at least one".into()));
                }
                if !names.is_empty() && names.len() != categories.len() {
                    return Err(err(
                        &field,
                        format!("{} names for {} categories", names.len(), categories.len()),
                    ));
                }
                let mut seen = categories.clone();
                seen.sort_by(f64::total_cmp);
                if seen.windows(2).any(|w| w[0] == w[1]) {
                    return Err(err(&field, "categories: each at most once".into()));
                }
                for c in categories {
                    if let Some(why) = FeatureType::Continuous.refuses(*c, range).or_else(|| {
                        (!c.is_finite() || c.abs() > 16_777_216.0)
                            .then(|| format!("{c} is not a float32 whole or finite number"))
                    }) {
                        return Err(err(&field, format!("category {why}")));
                    }
                }
                FeatureType::Categorical {
                    categories: categories.clone(),
                    names,
                }
            }
            None if dtype == ElementType::Bool => FeatureType::Categorical {
                categories: vec![0.0, 1.0],
                names: Vec::new(),
            },
            None if range.is_some() || integer.contains(f) => FeatureType::Integer,
            None => FeatureType::Continuous,
        };
        out.push(t);
    }
    Ok(out)
}

/// What a counterfactual may change, by feature name: declared under `[tabular.constraints]` in
/// the manifest, and added to per request.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    /// Features that must not change (age, a protected attribute).
    pub immutable: Vec<String>,
    /// Features that take whole numbers (counts).
    pub integer: Vec<String>,
    /// Features that may only go one way (`increase` or `decrease`).
    pub monotone: BTreeMap<String, Direction>,
    /// Lowest value per feature.
    pub min: BTreeMap<String, f64>,
    /// Highest value per feature.
    pub max: BTreeMap<String, f64>,
    /// Cost of a unit change per feature (multiplies the scaled distance; default 1).
    pub costs: BTreeMap<String, f64>,
}

/// The one way a monotone feature may change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Increase,
    Decrease,
}

impl Direction {
    /// The name requests and manifests use.
    pub fn name(self) -> &'static str {
        match self {
            Direction::Increase => "increase",
            Direction::Decrease => "decrease",
        }
    }
}

impl Constraints {
    /// Checks every name against `features` and every bound and cost: the message names each
    /// unknown feature and each min above its max.
    pub fn check(&self, features: &[String]) -> Result<(), String> {
        let known = |f: &String| features.contains(f);
        let mut unknown: Vec<&str> = self
            .immutable
            .iter()
            .chain(&self.integer)
            .chain(self.monotone.keys())
            .chain(self.min.keys())
            .chain(self.max.keys())
            .chain(self.costs.keys())
            .filter(|f| !known(f))
            .map(String::as_str)
            .collect();
        unknown.sort_unstable();
        unknown.dedup();
        if !unknown.is_empty() {
            let more = unknown.len().saturating_sub(20);
            let mut shown: Vec<String> = unknown.iter().take(20).map(|f| f.chars().take(100).collect()).collect();
            if more > 0 {
                shown.push(format!("and {more} more"));
            }
            return Err(format!("unknown features: {}", shown.join(", ")));
        }
        let mut problems = Vec::new();
        for (f, lo) in &self.min {
            if let Some(hi) = self.max.get(f).filter(|hi| lo > *hi) {
                problems.push(format!("`{f}`: min {lo} is above max {hi}"));
            }
        }
        for (what, map) in [("min", &self.min), ("max", &self.max)] {
            for (f, v) in map.iter().filter(|(_, v)| !v.is_finite()) {
                problems.push(format!("`{f}`: {what} {v} is not a finite number"));
            }
        }
        for (f, c) in self
            .costs
            .iter()
            .filter(|(_, c)| !(c.is_finite() && **c > 0.0 && **c <= 1e6))
        {
            problems.push(format!("`{f}`: cost {c} must be above 0 and at most 1e6"));
        }
        match problems.is_empty() {
            true => Ok(()),
            false => Err(problems.join("; ")),
        }
    }

    /// The constraints in force when a request asks for `more` on top of these (the manifest's):
    /// the manifest's are policy, so a request may add constraints or tighten them, never relax
    /// one. Immutable and integer features are united; a monotone direction may be added or
    /// repeated, not flipped; a min may only rise and a max only fall, and not past each other.
    /// Costs are preferences, not policy: the request's replace the manifest's. The error names
    /// every feature and constraint the request would relax.
    pub fn tightened(&self, more: &Constraints) -> Result<Constraints, String> {
        let mut out = self.clone();
        let mut relaxed = Vec::new();
        for (list, add) in [(&mut out.immutable, &more.immutable), (&mut out.integer, &more.integer)] {
            for f in add {
                if !list.contains(f) {
                    list.push(f.clone());
                }
            }
        }
        for (f, d) in &more.monotone {
            match self.monotone.get(f) {
                Some(policy) if policy != d => relaxed.push(format!(
                    "`{f}`: monotone `{}` would flip the manifest's `{}`",
                    d.name(),
                    policy.name()
                )),
                _ => {
                    out.monotone.insert(f.clone(), *d);
                }
            }
        }
        for (f, v) in &more.min {
            match self.min.get(f) {
                Some(policy) if v < policy => {
                    relaxed.push(format!("`{f}`: min {v} is below the manifest's min {policy}"))
                }
                _ => {
                    out.min.insert(f.clone(), *v);
                }
            }
        }
        for (f, v) in &more.max {
            match self.max.get(f) {
                Some(policy) if v > policy => {
                    relaxed.push(format!("`{f}`: max {v} is above the manifest's max {policy}"))
                }
                _ => {
                    out.max.insert(f.clone(), *v);
                }
            }
        }
        // A bound the request tightened past the manifest's other bound leaves no value.
        for (f, lo) in &out.min {
            if let Some(hi) = out.max.get(f).filter(|hi| lo > *hi) {
                relaxed.push(format!(
                    "`{f}`: min {lo} is above max {hi} (the request's and the manifest's together)"
                ));
            }
        }
        out.costs.extend(more.costs.clone());
        match relaxed.is_empty() {
            true => Ok(out),
            false => Err(format!(
                "{}; the manifest's constraints are policy: a request may add or tighten them, not relax them",
                relaxed.join("; ")
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constraints_in_force_are_a_fixed_point_of_tightening() {
        let policy: Constraints = toml::from_str(
            "immutable = [\"a\"]\nmonotone = { b = \"decrease\" }\nmin = { c = 0.0 }\nmax = { c = 9.0 }",
        )
        .unwrap();
        let request: Constraints =
            toml::from_str("immutable = [\"a\", \"d\"]\nmin = { c = 1.0 }\ncosts = { b = 2.0 }").unwrap();
        let in_force = policy.tightened(&request).unwrap();
        assert_eq!(in_force.immutable, ["a", "d"], "united, once each");
        assert_eq!((in_force.min["c"], in_force.max["c"]), (1.0, 9.0));
        // A plan run again on the echoed constraints (a job re-checked elsewhere) changes nothing.
        assert_eq!(policy.tightened(&in_force).unwrap(), in_force);
    }

    #[test]
    fn feature_types_follow_the_manifest_the_constraint_and_the_input_type() {
        let err = |field: &str, message: String| ManifestError {
            file: "m".into(),
            field: field.into(),
            message,
        };
        let features: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let declared: BTreeMap<String, TypeManifest> =
            toml::from_str("b = { categories = [0, 2], names = [\"off\", \"on\"] }").unwrap();
        let float = feature_types(declared.clone(), &features, &["c".into()], ElementType::Float32, &err).unwrap();
        assert_eq!(float[0], FeatureType::Continuous);
        assert!(matches!(&float[1], FeatureType::Categorical { categories, .. } if categories == &[0.0, 2.0]));
        assert_eq!(float[2], FeatureType::Integer, "from constraints.integer");
        let int = feature_types(declared, &features, &[], ElementType::Int64, &err).unwrap();
        assert_eq!(int[0], FeatureType::Integer, "an integer input's default");
        let flags = feature_types(BTreeMap::new(), &features, &[], ElementType::Bool, &err).unwrap();
        assert!(matches!(&flags[0], FeatureType::Categorical { categories, .. } if categories == &[0.0, 1.0]));
        let continuous: BTreeMap<String, TypeManifest> = toml::from_str("a = \"continuous\"").unwrap();
        let e = feature_types(continuous, &features, &[], ElementType::Int32, &err).unwrap_err();
        assert_eq!(e.field, "tabular.types.a");
        let half: BTreeMap<String, TypeManifest> = toml::from_str("a = { categories = [0.5] }").unwrap();
        let e = feature_types(half, &features, &[], ElementType::Int64, &err).unwrap_err();
        assert!(e.message.contains("0.5 is not a whole number"), "{e}");
        let unknown: BTreeMap<String, TypeManifest> = toml::from_str("z = \"integer\"").unwrap();
        assert!(feature_types(unknown, &features, &[], ElementType::Float32, &err).is_err());
        assert!(FeatureType::Integer.refuses(2.5, None).is_some());
        assert!(FeatureType::Continuous.refuses(1e9, Some((0.0, 255.0))).is_some());
    }
}
