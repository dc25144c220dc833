//! Concept sets: named sets of example inputs of one model (pictures of stripes, rows of one kind
//! of customer), what TCAV learns a concept's direction from and layer information labels by
//! attribute. Laid out and checked as a reference set is (`images/` with an optional
//! `labels.csv`, or `rows.csv`; the readers of [`super::source`]), uploaded as one is (the JSON
//! Lines of [`super::upload`], labels optional and free attribute names), or found in the folder
//! the manifest's `[reference] concepts` names. An upload is kept under
//! `data_dir/concepts/<model>/<name>/` and wins over a manifest folder of the same name.

use std::path::{Path, PathBuf};

use serde::Serialize;
use utoipa::ToSchema;

use super::source::{self, is_file_name, Inputs};
use super::upload::{self, LabelKind};
use crate::runtime::LoadedModel;

/// Fewest examples a concept set holds: fewer cannot train a classifier worth testing (TCAV's
/// authors used 10 to 50 per concept).
pub const MIN_EXAMPLES: usize = 10;
/// Most examples a concept set holds.
pub const MAX_EXAMPLES: usize = 1000;
/// Longest concept name.
const MAX_NAME: usize = 64;

/// A concept set read and checked; images stay on disk until a job decodes them.
#[derive(Debug, Clone)]
pub struct ConceptSet {
    /// Its name.
    pub name: String,
    /// Example ids (image file names, or row numbers).
    pub ids: Vec<String>,
    /// Each example's attribute (an index into `attributes`).
    pub labels: Vec<u32>,
    /// The attribute names, in order of first appearance (`""`: unlabelled).
    pub attributes: Vec<String>,
    /// Where the inputs are.
    pub inputs: Inputs,
    /// `upload` or `manifest`.
    pub source: &'static str,
}

/// What a listing says of a concept set.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ConceptSummary {
    /// Its name.
    pub name: String,
    /// Examples it holds.
    pub examples: usize,
    /// Attribute labels and how many examples carry each (empty: unlabelled).
    pub attributes: Vec<AttributeCount>,
    /// `upload` (kept in the data directory) or `manifest` (the model folder's).
    pub source: String,
}

/// One attribute label and its examples.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct AttributeCount {
    /// The label.
    pub label: String,
    /// Examples carrying it.
    pub examples: usize,
}

impl ConceptSet {
    /// Examples in the set.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Whether every example carries an attribute label.
    pub fn labelled(&self) -> bool {
        !self.attributes.iter().any(String::is_empty)
    }

    /// What a listing says of it.
    pub fn summary(&self) -> ConceptSummary {
        let attributes = match self.attributes.iter().all(String::is_empty) {
            true => Vec::new(),
            false => self
                .attributes
                .iter()
                .enumerate()
                .map(|(i, a)| AttributeCount {
                    label: a.clone(),
                    examples: self.labels.iter().filter(|&&l| l as usize == i).count(),
                })
                .collect(),
        };
        ConceptSummary {
            name: self.name.clone(),
            examples: self.len(),
            attributes,
            source: self.source.to_string(),
        }
    }
}

/// Whether `name` may name a concept set: letters, digits, `-`, `_` and `.`, not starting with a
/// dot, at most 64 characters (it names a folder).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('.')
        && is_file_name(name)
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// The folder `model`'s uploaded concept sets live in.
pub fn folder(data_dir: &Path, model: &str) -> PathBuf {
    data_dir.join("concepts").join(model)
}

/// The manifest's folder of concept sets, when it names one.
fn manifest_folder(model: &LoadedModel) -> Option<PathBuf> {
    let dir = model.spec.reference.as_ref()?.concepts.as_ref()?;
    Some(model.dir.join(dir))
}

/// Reads the concept set `name` of `model`: the upload if there is one, else the manifest's
/// folder. `Ok(None)`: no such set.
pub fn find(model: &LoadedModel, data_dir: &Path, name: &str) -> Result<Option<ConceptSet>, String> {
    if !valid_name(name) {
        return Ok(None);
    }
    let uploaded = folder(data_dir, &model.name).join(name);
    if uploaded.is_dir() {
        return read(model, &uploaded, name, "upload").map(Some);
    }
    match manifest_folder(model).map(|d| d.join(name)).filter(|d| d.is_dir()) {
        Some(dir) => read(model, &dir, name, "manifest").map(Some),
        None => Ok(None),
    }
}

/// Every concept set of `model` (uploads, then the manifest's not shadowed by one), by name; sets
/// that cannot be read are left out (a job naming one says why).
pub fn list(model: &LoadedModel, data_dir: &Path) -> Vec<ConceptSummary> {
    let mut names: Vec<String> = [Some(folder(data_dir, &model.name)), manifest_folder(model)]
        .into_iter()
        .flatten()
        .filter_map(|d| std::fs::read_dir(d).ok())
        .flat_map(|entries| entries.filter_map(|e| e.ok()))
        .filter(|e| e.path().is_dir())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| valid_name(n))
        .collect();
    names.sort();
    names.dedup();
    names
        .iter()
        .filter_map(|n| find(model, data_dir, n).ok().flatten())
        .map(|s| s.summary())
        .collect()
}

/// Reads the set in `dir`: `images/` with `labels.csv` (or, without it, every file of `images/`,
/// unlabelled), or `rows.csv`; checked as reference files are, naming file and line.
fn read(model: &LoadedModel, dir: &Path, name: &str, origin: &'static str) -> Result<ConceptSet, String> {
    let mut attributes: Vec<String> = Vec::new();
    let mut attribute = |cell: &str| -> Result<u32, String> {
        let cell = cell.trim();
        let i = match attributes.iter().position(|a| a == cell) {
            Some(i) => i,
            None => {
                attributes.push(cell.chars().take(100).collect());
                attributes.len() - 1
            }
        };
        Ok(i as u32)
    };
    let listing = if model.spec.image.is_some() {
        let images = dir.join("images");
        let labels = dir.join("labels.csv");
        if labels.is_file() {
            source::read_image_folder(images, &labels, MAX_EXAMPLES, &mut attribute)?
        } else {
            unlabelled_images(&images, MAX_EXAMPLES)?
        }
    } else {
        let rows = dir.join("rows.csv");
        let has_label = std::fs::read_to_string(&rows)
            .ok()
            .and_then(|t| {
                t.lines()
                    .next()
                    .map(|h| h.split(',').any(|c| c.trim().trim_matches('"') == "label"))
            })
            .unwrap_or(false);
        let label: Option<source::LabelOf> = match has_label {
            true => Some(&mut attribute),
            false => None,
        };
        source::read_feature_rows(model, &rows, MAX_EXAMPLES, label)?
    };
    if attributes.is_empty() {
        attributes.push(String::new());
    }
    let set = ConceptSet {
        name: name.to_string(),
        ids: listing.ids,
        labels: listing.labels,
        attributes,
        inputs: listing.inputs,
        source: origin,
    };
    if set.len() < MIN_EXAMPLES {
        return Err(format!(
            "concept set `{name}` holds {} examples; a concept set needs at least {MIN_EXAMPLES}",
            set.len()
        ));
    }
    Ok(set)
}

/// Every file of `images`, sorted, unlabelled (at most `max`; more is refused).
pub(crate) fn unlabelled_images(images: &Path, max: usize) -> Result<source::Listing, String> {
    let mut ids: Vec<String> = std::fs::read_dir(images)
        .map_err(|e| format!("images: {}", source::unreadable(&e)))?
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_file())
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| is_file_name(n) && !n.starts_with('.'))
        .collect();
    if ids.len() > max {
        return Err(format!("images: more than {max} files"));
    }
    ids.sort();
    Ok(source::Listing {
        labels: vec![0; ids.len()],
        ids,
        inputs: Inputs::Images(images.to_path_buf()),
        sha256: String::new(),
    })
}

/// Checks the JSON Lines `body` (lines as a reference upload's, `label` an optional attribute)
/// and keeps it as `model`'s concept set `name`, replacing one of that name; the set as read back.
pub fn upload(model: &LoadedModel, data_dir: &Path, name: &str, body: &[u8]) -> Result<ConceptSet, String> {
    let root = folder(data_dir, &model.name);
    let staging = root.join(format!(".{name}.{}", uuid::Uuid::new_v4()));
    let written = upload::write_rows_of(model, body, &staging, MAX_EXAMPLES, LabelKind::Attribute)
        .and_then(|_| read(model, &staging, name, "upload"));
    let set = match written {
        Ok(set) => set,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
    };
    // The old set goes first: a rename cannot replace a folder that holds files.
    let target = root.join(name);
    let _ = std::fs::remove_dir_all(&target);
    if let Err(e) = std::fs::rename(&staging, &target) {
        let _ = std::fs::remove_dir_all(&staging);
        tracing::error!(folder = %target.display(), error = %e, "cannot keep a concept set");
        return Err("the server cannot store the upload now; its log says why".into());
    }
    let inputs = match set.inputs {
        Inputs::Images(_) => Inputs::Images(target.join("images")),
        rows => rows,
    };
    Ok(ConceptSet { inputs, ..set })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_folder_names() {
        assert!(valid_name("striped"));
        assert!(valid_name("dotted-2.v1"));
        for bad in ["", ".hidden", "../x", "a/b", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }
}
