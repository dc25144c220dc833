//! A reference set uploaded at run time (`POST /v1/models/{model}/reference`, JSON Lines): each
//! line checked, the rows written into a folder of the data directory as a manifest would name
//! them, built like the manifest's set, and put in force whole only when the build succeeds. A
//! pointer file names the set in force, so the next start uses it instead of the manifest's.

use std::path::{Path, PathBuf};

use base64::Engine;
use serde::Deserialize;

use super::source::{is_file_name, label_of, SHOWN};
use crate::runtime::manifest::ReferenceSpec;
use crate::runtime::LoadedModel;

/// One line of an upload.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    /// Image models: the row's id, a file name (`a.png`).
    id: Option<String>,
    /// A label name or class index (a concept set's rows: an optional attribute name).
    #[serde(default)]
    label: serde_json::Value,
    /// Image models: the image file, base64.
    image: Option<String>,
    /// Tabular models: the features, in the model's order or by name.
    features: Option<serde_json::Value>,
}

/// The folder uploads of `model` live in.
pub fn folder(data_dir: &Path, model: &str) -> PathBuf {
    data_dir.join("reference").join(format!("{model}.uploads"))
}

/// One checked row: its id, label cell (a class index, or a concept set's attribute) and the
/// bytes written for it (an image file, or a CSV line's cells).
type Row = (String, String, Vec<u8>);

/// What an upload's `label` is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelKind {
    /// One of the model's classes, required (a reference set).
    Class,
    /// A free attribute name, optional (a concept set: examples of one concept, labelled by
    /// attribute when layer information asks for it).
    Attribute,
}

/// Checks every line of `body` and writes the rows into `dir` (created); the spec that reads
/// them, with the manifest's other settings. An error names the first bad lines.
pub fn write(model: &LoadedModel, body: &[u8], dir: &Path, max_rows: usize) -> Result<ReferenceSpec, String> {
    write_rows_of(model, body, dir, max_rows, LabelKind::Class)?;
    spec_in(dir, model).ok_or_else(|| "the upload's files were not written".to_string())
}

/// Checks every line of `body` (labels read as `kind` says) and writes the rows into `dir`
/// (created) as a manifest would name them: `images/` and `labels.csv`, or `rows.csv`. Returns
/// the row count; an error names the first bad lines.
pub fn write_rows_of(
    model: &LoadedModel,
    body: &[u8],
    dir: &Path,
    max_rows: usize,
    kind: LabelKind,
) -> Result<usize, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8 text".to_string())?;
    let mut bad = Vec::new();
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    for (n, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
        if rows.len() == max_rows {
            return Err(format!("more than {max_rows} rows (max_reference_rows)"));
        }
        let parsed = serde_json::from_str::<Line>(line)
            .map_err(|e| e.to_string())
            .and_then(|l| checked_row(model, l, &mut seen, rows.len(), kind));
        match parsed {
            Ok(row) => rows.push(row),
            Err(e) => {
                bad.push(format!("line {}: {e}", n + 1));
                if bad.len() == SHOWN {
                    break;
                }
            }
        }
    }
    if !bad.is_empty() {
        return Err(bad.join("; "));
    }
    if rows.is_empty() {
        return Err("no rows".into());
    }
    match model.spec.image.is_some() {
        true => write_images(&rows, dir),
        false => write_rows(model, &rows, dir),
    }
    .map_err(|e| cannot_write(dir, e))?;
    Ok(rows.len())
}

/// One parsed line checked against `model`: its label, and an image (a file name not `seen`
/// before, base64 PNG or JPEG) or features (as a request's, prepared). Tabular rows are
/// numbered from `index`.
fn checked_row(
    model: &LoadedModel,
    l: Line,
    seen: &mut std::collections::HashSet<String>,
    index: usize,
    kind: LabelKind,
) -> Result<Row, String> {
    let labels = &model.spec.labels;
    let class =
        match kind {
            LabelKind::Class => match &l.label {
                serde_json::Value::String(s) => label_of(s, labels),
                serde_json::Value::Number(i) => i.as_u64().and_then(|i| label_of(&i.to_string(), labels)),
                _ => None,
            }
            .ok_or_else(|| format!("label {} is neither a label name nor a class index", l.label))?
            .to_string(),
            LabelKind::Attribute => match &l.label {
                serde_json::Value::Null => String::new(),
                serde_json::Value::String(s) if is_attribute(s) => s.clone(),
                _ => return Err(
                    "label: an attribute is a string of at most 100 characters without commas, quotes or line breaks"
                        .into(),
                ),
            },
        };
    if model.spec.image.is_some() {
        let id = l.id.ok_or("an image row needs an `id` (its file name)")?;
        if !is_file_name(&id) {
            return Err(format!(
                "id `{}` is not a file name",
                id.chars().take(100).collect::<String>()
            ));
        }
        if !seen.insert(id.clone()) {
            return Err(format!("id `{id}` appears twice"));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(l.image.ok_or("an image row needs `image` (base64)")?.trim())
            .map_err(|e| format!("image: not base64: {e}"))?;
        image::guess_format(&bytes).map_err(|_| "image: not a PNG or JPEG file".to_string())?;
        Ok((id, class, bytes))
    } else {
        let features = l.features.ok_or("a tabular row needs `features`")?;
        let spec = model.spec.tabular.as_ref().ok_or("the model takes no features")?;
        let input = match features {
            serde_json::Value::Array(v) => crate::runtime::preprocess::Features::Ordered(v),
            serde_json::Value::Object(m) => crate::runtime::preprocess::Features::Named(m),
            _ => return Err("`features` is neither a list nor an object".into()),
        };
        let tensor = crate::runtime::preprocess::prepare_features(&input, spec).map_err(|e| e.to_string())?;
        let cells: Vec<String> = tensor.as_f32().unwrap_or(&[]).iter().map(f32::to_string).collect();
        Ok((index.to_string(), class, cells.join(",").into_bytes()))
    }
}

/// An image set as a manifest names one: `images/` and `labels.csv`.
fn write_images(rows: &[Row], dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("images"))?;
    let mut csv = String::from("id,label\n");
    for (id, class, bytes) in rows {
        std::fs::write(dir.join("images").join(id), bytes)?;
        csv.push_str(&format!("{id},{class}\n"));
    }
    std::fs::write(dir.join("labels.csv"), csv)
}

/// A tabular set as a manifest names one: `rows.csv`, a column per feature and `label`.
fn write_rows(model: &LoadedModel, rows: &[Row], dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let features = model
        .spec
        .tabular
        .as_ref()
        .map(|t| t.features.as_slice())
        .unwrap_or_default();
    // Feature names may hold commas: the CSV's header is written quoted.
    let mut csv = features
        .iter()
        .map(|f| format!("\"{f}\""))
        .collect::<Vec<_>>()
        .join(",");
    csv.push_str(",label\n");
    for (_, class, cells) in rows {
        csv.push_str(&format!("{},{class}\n", String::from_utf8_lossy(cells)));
    }
    std::fs::write(dir.join("rows.csv"), csv)
}

/// The spec of the uploaded set in force for `model`, when there is one.
pub fn current(data_dir: &Path, model: &LoadedModel) -> Option<ReferenceSpec> {
    let root = folder(data_dir, &model.name);
    let name = std::fs::read_to_string(root.join("current")).ok()?;
    spec_in(&root.join(name.trim()), model)
}

/// Writes a multipart upload's parts into `dir` as a manifest's files would be: a `labels` part
/// (CSV `id,label`) and image files (their file names are the ids) for image models, a `rows` part
/// (CSV of the features and `label`) for tabular ones. The reader then checks them as it checks
/// the manifest's files, naming file and line.
pub fn write_form(
    model: &LoadedModel,
    parts: Vec<(String, Option<String>, Vec<u8>)>,
    dir: &Path,
) -> Result<ReferenceSpec, String> {
    let io = |e: std::io::Error| cannot_write(dir, e);
    let image = model.spec.image.is_some();
    std::fs::create_dir_all(dir.join("images")).map_err(io)?;
    let mut seen = std::collections::HashSet::new();
    for (name, file_name, bytes) in parts {
        match (name.as_str(), file_name) {
            ("labels", _) if image => std::fs::write(dir.join("labels.csv"), bytes).map_err(io)?,
            ("rows", _) if !image => std::fs::write(dir.join("rows.csv"), bytes).map_err(io)?,
            (_, Some(file)) if image => {
                if !is_file_name(&file) {
                    return Err(format!(
                        "part `{name}`: file name `{}` is not a plain file name",
                        file.chars().take(100).collect::<String>()
                    ));
                }
                if !seen.insert(file.clone()) {
                    return Err(format!("file `{file}` appears twice"));
                }
                std::fs::write(dir.join("images").join(&file), bytes).map_err(io)?;
            }
            _ => {
                return Err(format!(
                    "unexpected part `{}`: {}",
                    name.chars().take(100).collect::<String>(),
                    match image {
                        true => "an image model's upload holds a `labels` CSV and image files",
                        false => "a tabular model's upload holds a `rows` CSV",
                    }
                ))
            }
        }
    }
    spec_in(dir, model).ok_or_else(|| match image {
        true => "no `labels` part".to_string(),
        false => "no `rows` part".to_string(),
    })
}

/// A failure to write an upload: logged with its folder, answered without it.
fn cannot_write(dir: &Path, e: std::io::Error) -> String {
    tracing::error!(folder = %dir.display(), error = %e, "cannot write a reference upload");
    "the server cannot store the upload now; its log says why".to_string()
}

/// The spec reading the files an upload wrote into `dir`, with the manifest's other settings.
fn spec_in(dir: &Path, model: &LoadedModel) -> Option<ReferenceSpec> {
    let mut spec = model.spec.reference.clone().unwrap_or_default();
    if dir.join("labels.csv").is_file() {
        spec.images = Some(dir.join("images").display().to_string());
        spec.labels = Some(dir.join("labels.csv").display().to_string());
        spec.csv = None;
    } else if dir.join("rows.csv").is_file() {
        spec.csv = Some(dir.join("rows.csv").display().to_string());
        spec.images = None;
        spec.labels = None;
    } else {
        return None;
    }
    Some(spec)
}

/// Makes the upload in `dir` the one in force (the pointer replaced by a rename) and removes the
/// one it replaces. Other folders are left alone: an upload still building lives beside it.
pub fn put_in_force(data_dir: &Path, model: &str, dir: &Path) -> Result<(), String> {
    let root = folder(data_dir, model);
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or("an upload folder without a name")?;
    let replaced = std::fs::read_to_string(root.join("current")).ok();
    let tmp = root.join("current.tmp");
    std::fs::write(&tmp, name).map_err(|e| e.to_string())?;
    std::fs::rename(&tmp, root.join("current")).map_err(|e| e.to_string())?;
    if let Some(old) = replaced
        .map(|o| o.trim().to_string())
        .filter(|o| o != name && is_file_name(o))
    {
        let _ = std::fs::remove_dir_all(root.join(old));
    }
    Ok(())
}

/// Whether `s` may be an attribute label: short, and a plain CSV cell.
fn is_attribute(s: &str) -> bool {
    s.chars().count() <= 100 && !s.chars().any(|c| matches!(c, ',' | '"' | '\n' | '\r'))
}
