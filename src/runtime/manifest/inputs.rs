//! `[inputs.NAME]`: every graph input and its role. One input is explained (the image, the
//! features, the tokens); every other one is a constant side input (a scale, a mask) whose value
//! the manifest gives and explaind feeds on every pass. Element types: float32, int64, int32,
//! bool and uint8. A tabular model may mark several float inputs explained: the registry joins
//! them into one input ([`crate::onnx::join`]) whose features are all of theirs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{FieldError, ManifestError};
use crate::onnx::join::Block;
use crate::onnx::{Dim, TensorInfo};
use crate::runtime::tensor::{ElementType, TensorData};

/// Most values one constant may hold.
const MAX_CONSTANT_VALUES: usize = 1 << 24;

/// One `[inputs.NAME]` table as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct InputManifest {
    role: Role,
    value: Option<toml::Value>,
}

/// What explaind feeds a graph input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// The input the methods perturb or differentiate, and attribute to.
    Explained,
    /// A side input fed the manifest's value on every pass.
    Constant,
}

/// A graph input, its element type and its role, as the model report lists them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct InputRole {
    /// The graph input.
    pub name: String,
    /// Its element type.
    pub dtype: ElementType,
    /// What explaind feeds it.
    pub role: Role,
    /// Constants: the shape of the value fed (per row when `batched`); several explained inputs:
    /// each one's row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shape: Option<Vec<usize>>,
    /// Constants: true when the input has a batch axis, and the value is fed once per row.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batched: Option<bool>,
    /// Several explained inputs: this input's features, columns `[start, end)` of the joined
    /// features (`tabular.features` names them in that order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub features: Option<[usize; 2]>,
}

/// A constant side input, ready to feed.
#[derive(Debug, Clone)]
pub struct Constant {
    /// The graph input.
    pub name: String,
    /// The value's shape: one row's when `batched`, else the whole tensor's.
    pub shape: Vec<usize>,
    /// Fed once per row of each pass (the input has a batch axis), else whole.
    pub batched: bool,
    /// Its values, in the input's element type.
    pub value: TensorData,
}

/// The graph inputs resolved: the explained one, every input's role, and the constants.
pub(super) struct Resolved<'a> {
    pub(super) explained: &'a TensorInfo,
    pub(super) dtype: ElementType,
    pub(super) roles: Vec<InputRole>,
    pub(super) constants: Vec<Constant>,
}

/// Resolves the explained input (`input`, or the one `[inputs]` marks explained, or the only
/// input left) and every other graph input's constant. `others_free`: the other inputs need no
/// role (a text model's, which `[text]` names).
pub(super) fn resolve<'a>(
    input: Option<&str>,
    declared: BTreeMap<String, InputManifest>,
    (graph, joined): (&'a [TensorInfo], &[Block]),
    others_free: bool,
    err: &FieldError,
) -> Result<Resolved<'a>, ManifestError> {
    let names = || {
        graph
            .iter()
            .map(|t| format!("`{}`", t.name))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let joined_away = |k: &str| joined.iter().any(|b| b.name == k);
    if let Some(unknown) = declared
        .keys()
        .find(|k| !joined_away(k) && !graph.iter().any(|t| &t.name == *k))
    {
        return Err(err(
            &format!("inputs.{unknown}"),
            format!("no graph input `{unknown}` (the graph has {})", names()),
        ));
    }
    let explained: Vec<&String> = declared
        .iter()
        .filter(|(_, m)| m.role == Role::Explained)
        .map(|(k, _)| k)
        .collect();
    if let Some(valued) = explained
        .iter()
        .find(|n| declared.get(**n).is_some_and(|m| m.value.is_some()))
    {
        return Err(err(
            &format!("inputs.{valued}.value"),
            "an explained input takes no value (the request gives it)".into(),
        ));
    }
    if explained.len() > 1 && joined.is_empty() {
        return Err(err(
            "inputs",
            format!(
                "several explained inputs ({}): only a tabular model's float inputs are explained together \
                 (their features joined); give the others role = \"constant\" and their value",
                explained
                    .iter()
                    .map(|n| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ));
    }
    if explained.len() > 1 && input.is_some() {
        return Err(err(
            "input",
            "[inputs] marks several inputs explained: they are explained together, so `input` names none".into(),
        ));
    }
    let name = match (input, explained.first()) {
        _ if !joined.is_empty() => Some(crate::onnx::join::JOINED),
        (Some(a), Some(b)) if a != b.as_str() => {
            return Err(err(
                "input",
                format!("`{a}`, but [inputs.{b}] says `{b}` is the explained input"),
            ))
        }
        (Some(a), _) => Some(a),
        (None, Some(b)) => Some(b.as_str()),
        (None, None) => None,
    };
    let constant = |t: &TensorInfo| declared.get(&t.name).is_some_and(|m| m.role == Role::Constant);
    let candidates: Vec<TensorInfo> = graph.iter().filter(|t| !constant(t)).cloned().collect();
    let picked = super::pick(&candidates, name, |t| t.dtype == "float32").map_err(|m| err("input", m))?;
    let explained = graph
        .iter()
        .find(|t| t.name == picked.name)
        .ok_or_else(|| err("input", format!("no graph input `{}`", picked.name)))?;
    if constant(explained) {
        return Err(err(
            &format!("inputs.{}", explained.name),
            "the explained input cannot be a constant".into(),
        ));
    }
    let dtype = element_type(explained).map_err(|m| err("input", m))?;
    let mut roles = match joined {
        [] => vec![InputRole {
            name: explained.name.clone(),
            dtype,
            role: Role::Explained,
            shape: None,
            batched: None,
            features: None,
        }],
        blocks => blocks
            .iter()
            .map(|b| InputRole {
                name: b.name.clone(),
                dtype,
                role: Role::Explained,
                shape: Some(vec![b.len]),
                batched: Some(true),
                features: Some([b.start, b.start + b.len]),
            })
            .collect(),
    };
    let mut constants = Vec::new();
    for other in graph.iter().filter(|t| t.name != explained.name) {
        let field = format!("inputs.{}", other.name);
        let Some(m) = declared.get(&other.name) else {
            if others_free {
                continue;
            }
            return Err(err(
                &field,
                format!(
                    "graph input `{}` has no role: explaind explains `{}` and feeds every other input a \
                     constant; give [inputs.{}] role = \"constant\" and its value",
                    other.name, explained.name, other.name
                ),
            ));
        };
        let value = m.value.as_ref().ok_or_else(|| {
            err(
                &format!("{field}.value"),
                "missing: a constant input needs its value".into(),
            )
        })?;
        let c = constant_of(other, value).map_err(|why| err(&format!("{field}.value"), why))?;
        roles.push(InputRole {
            name: c.name.clone(),
            dtype: element_type(other).map_err(|m| err(&field, m))?,
            role: Role::Constant,
            shape: Some(c.shape.clone()),
            batched: Some(c.batched),
            features: None,
        });
        constants.push(c);
    }
    Ok(Resolved {
        explained,
        dtype,
        roles,
        constants,
    })
}

/// The inputs `declared` marks explained.
pub(super) fn explained_names(declared: &BTreeMap<String, InputManifest>) -> Vec<String> {
    declared
        .iter()
        .filter(|(_, m)| m.role == Role::Explained)
        .map(|(k, _)| k.clone())
        .collect()
}

/// The inputs `declared` feeds a constant.
pub(super) fn constant_names(declared: &BTreeMap<String, InputManifest>) -> Vec<String> {
    declared
        .iter()
        .filter(|(_, m)| m.role == Role::Constant)
        .map(|(k, _)| k.clone())
        .collect()
}

/// The element type of a graph input, or why explaind cannot feed it.
fn element_type(t: &TensorInfo) -> Result<ElementType, String> {
    ElementType::of_name(&t.dtype).ok_or_else(|| {
        format!(
            "input `{}` is {}; explaind feeds float32, int64, int32, bool and uint8 inputs",
            t.name, t.dtype
        )
    })
}

/// One scalar of a constant as written.
#[derive(Clone, Copy)]
enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
}

/// The constant `value` for input `t`, checked against its element type and shape: a scalar
/// (filling a fixed shape) or nested arrays. An input whose first axis is free has a batch axis:
/// the value is then one row (the shape past that axis), fed once per row.
fn constant_of(t: &TensorInfo, value: &toml::Value) -> Result<Constant, String> {
    let dtype = element_type(t)?;
    let mut scalars = Vec::new();
    let shape = flatten(value, 0, &mut scalars)?;
    let dims = t.shape.as_deref();
    let batched = dims.is_some_and(|d| d.first().is_some_and(|first| first.fixed().is_none()));
    let expected: Option<&[Dim]> = dims.map(|d| if batched { &d[1..] } else { d });
    let shape = match expected {
        None => shape,
        Some(expected) => fit_shape(&t.name, expected, shape, &mut scalars, batched)?,
    };
    let value = typed(dtype, &scalars).map_err(|why| format!("input `{}` is {}: {why}", t.name, dtype.name()))?;
    Ok(Constant {
        name: t.name.clone(),
        shape,
        batched,
        value,
    })
}

/// The value's shape checked against the input's (`expected`, past the batch axis when
/// `batched`); a scalar fills a fixed shape.
fn fit_shape(
    name: &str,
    expected: &[Dim],
    shape: Vec<usize>,
    scalars: &mut Vec<Scalar>,
    batched: bool,
) -> Result<Vec<usize>, String> {
    let show = |d: &[Dim]| {
        let parts: Vec<String> = d
            .iter()
            .map(|d| d.fixed().map_or("?".to_string(), |n| n.to_string()))
            .collect();
        format!("[{}]", parts.join(", "))
    };
    let per = if batched {
        " per row (its first axis is the batch)"
    } else {
        ""
    };
    if shape.is_empty() && !expected.is_empty() {
        let fixed: Option<Vec<usize>> = expected.iter().map(Dim::fixed).collect();
        let fixed = fixed.ok_or_else(|| {
            format!(
                "a scalar fills only a fixed shape; input `{name}` takes {}{per}: give the full value",
                show(expected)
            )
        })?;
        let n = fixed
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .filter(|n| *n <= MAX_CONSTANT_VALUES)
            .ok_or_else(|| format!("input `{name}` takes more than {MAX_CONSTANT_VALUES} values"))?;
        let one = scalars.first().copied().unwrap_or(Scalar::Int(0));
        *scalars = vec![one; n];
        return Ok(fixed);
    }
    let fits = shape.len() == expected.len()
        && shape
            .iter()
            .zip(expected)
            .all(|(s, d)| d.fixed().is_none_or(|n| n == *s));
    if !fits {
        let given: Vec<String> = shape.iter().map(usize::to_string).collect();
        return Err(format!(
            "the value has shape [{}]; input `{name}` takes {}{per}",
            given.join(", "),
            show(expected)
        ));
    }
    Ok(shape)
}

/// Nested arrays to their shape (returned) and scalars (appended to `out`), refusing ragged ones.
fn flatten(v: &toml::Value, depth: usize, out: &mut Vec<Scalar>) -> Result<Vec<usize>, String> {
    if depth > 8 {
        return Err("arrays nested more than 8 deep".into());
    }
    match v {
        toml::Value::Integer(i) => out.push(Scalar::Int(*i)),
        toml::Value::Float(f) => out.push(Scalar::Float(*f)),
        toml::Value::Boolean(b) => out.push(Scalar::Bool(*b)),
        toml::Value::Array(items) => {
            let mut inner: Option<Vec<usize>> = None;
            for item in items {
                if out.len() > MAX_CONSTANT_VALUES {
                    return Err(format!("more than {MAX_CONSTANT_VALUES} values"));
                }
                let shape = flatten(item, depth + 1, out)?;
                match &inner {
                    Some(first) if *first != shape => {
                        return Err("the arrays are ragged (rows of different lengths or depths)".into())
                    }
                    Some(_) => {}
                    None => inner = Some(shape),
                }
            }
            let mut shape = vec![items.len()];
            shape.extend(inner.unwrap_or_default());
            return Ok(shape);
        }
        other => return Err(format!("{} is not a number or a boolean", other.type_str())),
    }
    Ok(Vec::new())
}

/// The scalars in `dtype`: numbers for float32, whole numbers within range for the integers,
/// booleans for bool.
fn typed(dtype: ElementType, scalars: &[Scalar]) -> Result<TensorData, String> {
    let whole = |lo: i64, hi: i64| -> Result<Vec<i64>, String> {
        scalars
            .iter()
            .map(|s| match *s {
                Scalar::Int(i) if (lo..=hi).contains(&i) => Ok(i),
                Scalar::Int(i) => Err(format!("{i} is out of its range [{lo}, {hi}]")),
                Scalar::Float(f) => Err(format!("{f} is not an integer")),
                Scalar::Bool(b) => Err(format!("{b} is not an integer")),
            })
            .collect()
    };
    Ok(match dtype {
        ElementType::Float32 => TensorData::F32(
            scalars
                .iter()
                .map(|s| match *s {
                    Scalar::Int(i) => Ok(i as f32),
                    Scalar::Float(f) if f.is_finite() && f.abs() <= f64::from(f32::MAX) => Ok(f as f32),
                    Scalar::Float(f) => Err(format!("{f} is not a finite float32")),
                    Scalar::Bool(b) => Err(format!("{b} is not a number")),
                })
                .collect::<Result<_, String>>()?,
        ),
        ElementType::Int64 => TensorData::I64(whole(i64::MIN, i64::MAX)?),
        ElementType::Int32 => TensorData::I32(
            whole(i32::MIN.into(), i32::MAX.into())?
                .into_iter()
                .map(|i| i as i32)
                .collect(),
        ),
        ElementType::Uint8 => TensorData::U8(whole(0, 255)?.into_iter().map(|i| i as u8).collect()),
        ElementType::Bool => TensorData::Bool(
            scalars
                .iter()
                .map(|s| match *s {
                    Scalar::Bool(b) => Ok(b),
                    Scalar::Int(i) => Err(format!("{i} is not a boolean (write true or false)")),
                    Scalar::Float(f) => Err(format!("{f} is not a boolean (write true or false)")),
                })
                .collect::<Result<_, String>>()?,
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(name: &str, dtype: &str, dims: &[i64]) -> TensorInfo {
        TensorInfo {
            name: name.into(),
            dtype: dtype.into(),
            shape: Some(
                dims.iter()
                    .map(|&d| {
                        if d < 0 {
                            Dim::Symbolic("batch".into())
                        } else {
                            Dim::Fixed(d)
                        }
                    })
                    .collect(),
            ),
        }
    }

    fn value(text: &str) -> toml::Value {
        toml::from_str::<toml::Table>(&format!("v = {text}")).unwrap()["v"].clone()
    }

    #[test]
    fn constants_are_checked_against_the_inputs_type_and_shape() {
        let mask = info("mask", "int64", &[-1, 3]);
        let c = constant_of(&mask, &value("[1, 0, 1]")).unwrap();
        assert_eq!((c.shape.as_slice(), c.batched), (&[3usize][..], true));
        assert_eq!(c.value, TensorData::I64(vec![1, 0, 1]));
        let filled = constant_of(&mask, &value("1")).unwrap();
        assert_eq!(filled.value, TensorData::I64(vec![1, 1, 1]));
        let short = constant_of(&mask, &value("[1, 0]")).unwrap_err();
        assert!(
            short.contains("shape [2]") && short.contains("takes [3] per row"),
            "{short}"
        );
        let half = constant_of(&mask, &value("[1, 0.5, 1]")).unwrap_err();
        assert!(half.contains("0.5 is not an integer"), "{half}");
        let scale = info("scale", "float32", &[]);
        let s = constant_of(&scale, &value("2.5")).unwrap();
        assert_eq!((s.shape.len(), s.batched, s.value.len()), (0, false, 1));
        assert!(constant_of(&scale, &value("[2.5]")).is_err());
        let flags = info("flags", "bool", &[2]);
        assert_eq!(
            constant_of(&flags, &value("[true, false]")).unwrap().value,
            TensorData::Bool(vec![true, false])
        );
        assert!(constant_of(&flags, &value("[1, 0]"))
            .unwrap_err()
            .contains("not a boolean"));
        assert!(constant_of(&flags, &value("[[true], false]"))
            .unwrap_err()
            .contains("ragged"));
        let small = info("b", "uint8", &[1]);
        assert!(constant_of(&small, &value("[256]"))
            .unwrap_err()
            .contains("out of its range"));
    }
}
