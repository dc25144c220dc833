//! Reading a reference set's files: an image folder with a labels CSV, or a tabular CSV with a
//! `label` column. Every bad line is refused naming the file and line; sizes are checked before
//! anything is kept.

use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::runtime::manifest::ReferenceSpec;
use crate::runtime::preprocess::{decode_image, prepare_image};
use crate::runtime::{LoadedModel, Tensor};

/// The rows of a reference set, read and checked, inputs not yet decoded (images) or kept
/// (tabular rows are small).
#[derive(Debug, Clone)]
pub struct Listing {
    /// Row ids: image file names, or row numbers.
    pub ids: Vec<String>,
    /// Labels (class indices).
    pub labels: Vec<u32>,
    /// What the rows' inputs are.
    pub inputs: Inputs,
    /// sha256 over the files (labels, and every image's name and bytes).
    pub sha256: String,
}

/// Where a listing's inputs come from.
#[derive(Debug, Clone)]
pub enum Inputs {
    /// Image files in this folder, named by the ids.
    Images(PathBuf),
    /// Feature rows (the model's feature order), one per id.
    Rows(Vec<Vec<f32>>),
}

/// A parsed CSV: the header's cells, then each data line's number (from 1) and cells.
struct Csv {
    header: Vec<String>,
    lines: Vec<(usize, Vec<String>)>,
}

/// Bad lines named in a refusal, at most (the rest are not read).
pub(crate) const SHOWN: usize = 5;

/// How an error names `path`: its file name alone. The set's folder is the operator's to know
/// (start-up logs say it); an upload's is a server path no answer may show.
fn named(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "the file".into())
}

/// Why a file could not be read, without the operating system's text.
fn unreadable(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file",
        std::io::ErrorKind::PermissionDenied => "not readable",
        _ => "cannot be read",
    }
}

fn read_csv(path: &Path, max_rows: usize) -> Result<(Csv, Vec<u8>), String> {
    let name = named(path);
    let bytes = std::fs::read(path).map_err(|e| {
        tracing::warn!(path = %path.display(), error = %e, "reference set file unreadable");
        format!("{name}: {}", unreadable(&e))
    })?;
    let text = std::str::from_utf8(&bytes).map_err(|_| format!("{name}: not UTF-8 text"))?;
    let mut numbered = text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty());
    let cells = |l: &str| -> Vec<String> { l.split(',').map(|c| c.trim().trim_matches('"').to_string()).collect() };
    let header = cells(numbered.next().ok_or_else(|| format!("{name}: empty file"))?.1);
    let mut lines = Vec::new();
    for (n, line) in numbered {
        if lines.len() == max_rows {
            return Err(format!("{name}: more than {max_rows} rows (max_reference_rows)"));
        }
        lines.push((n + 1, cells(line)));
    }
    if lines.is_empty() {
        return Err(format!("{name}: no rows"));
    }
    Ok((Csv { header, lines }, bytes))
}

fn column(csv: &Csv, path: &Path, name: &str) -> Result<usize, String> {
    csv.header
        .iter()
        .position(|h| h == name)
        .ok_or_else(|| format!("{}: no `{name}` column", named(path)))
}

/// The bad lines of a file, each `{file}: line {n}: {why}`, the first [`SHOWN`] of them.
struct BadLines {
    file: String,
    lines: Vec<String>,
}

impl BadLines {
    fn new(path: &Path) -> Self {
        Self {
            file: named(path),
            lines: Vec::new(),
        }
    }

    /// Notes line `line`; false once enough are noted to stop reading.
    fn add(&mut self, line: usize, why: impl std::fmt::Display) -> bool {
        self.lines.push(format!("{}: line {line}: {why}", self.file));
        self.lines.len() < SHOWN
    }

    fn into_result(self) -> Result<(), String> {
        match self.lines.is_empty() {
            true => Ok(()),
            false => Err(self.lines.join("; ")),
        }
    }
}

/// Whether `id` is a plain file name: no folder, no way out of the folder it is read from.
pub(crate) fn is_file_name(id: &str) -> bool {
    !id.is_empty() && id != ".." && id != "." && Path::new(id).file_name().is_some_and(|f| f == id)
}

/// A label cell as a class index: a label name, or an index below the class count.
pub(crate) fn label_of(cell: &str, labels: &[String]) -> Option<u32> {
    labels
        .iter()
        .position(|l| l == cell)
        .or_else(|| cell.parse::<usize>().ok().filter(|&i| i < labels.len()))
        .map(|i| i as u32)
}

/// Reads `model`'s reference files as its manifest names them (paths relative to its folder).
pub fn read(model: &LoadedModel, spec: &ReferenceSpec, max_rows: usize) -> Result<Listing, String> {
    match (&spec.images, &spec.labels, &spec.csv) {
        (Some(images), Some(labels_csv), _) => read_images(model, images, labels_csv, max_rows),
        (None, None, Some(rows_csv)) => read_rows(model, rows_csv, max_rows),
        _ => Err("the reference section names neither images with labels nor a csv".into()),
    }
}

/// Why a label cell is refused, naming the class count.
fn bad_label(cell: &str, labels: &[String]) -> String {
    format!(
        "label `{}` is neither a label name nor a class index below {}",
        cell.chars().take(100).collect::<String>(),
        labels.len()
    )
}

/// An image set: a folder of files and a CSV of `id,label`; the hash covers the CSV and every
/// image read.
fn read_images(model: &LoadedModel, images: &str, labels_csv: &str, max_rows: usize) -> Result<Listing, String> {
    let dir = model.dir.join(images);
    let path = model.dir.join(labels_csv);
    let labels = &model.spec.labels;
    let mut hash = Sha256::new();
    let (csv, bytes) = read_csv(&path, max_rows)?;
    hash.update(&bytes);
    let (id_col, label_col) = (column(&csv, &path, "id")?, column(&csv, &path, "label")?);
    let mut ids = Vec::with_capacity(csv.lines.len());
    let mut classes = Vec::with_capacity(csv.lines.len());
    let mut seen = std::collections::HashSet::new();
    let mut bad = BadLines::new(&path);
    for (line, cells) in &csv.lines {
        let (Some(id), Some(label)) = (cells.get(id_col), cells.get(label_col)) else {
            if bad.add(*line, "fewer cells than the header") {
                continue;
            }
            break;
        };
        let id_shown = id.chars().take(100).collect::<String>();
        // A plain file name inside the folder: no paths out of it.
        let checked = if !is_file_name(id) {
            Err(format!("id `{id_shown}` is not a file name"))
        } else if !seen.insert(id.clone()) {
            Err(format!("id `{id_shown}` appears twice"))
        } else {
            label_of(label, labels)
                .ok_or_else(|| bad_label(label, labels))
                .and_then(|class| {
                    let file = dir.join(id);
                    // Once a line is bad the set is refused: later lines are only checked
                    // for their file, not read and hashed.
                    let image = match bad.lines.is_empty() {
                        true => std::fs::read(&file),
                        false => std::fs::metadata(&file).map(|_| Vec::new()),
                    };
                    image
                        .map(|image| (class, image))
                        .map_err(|e| format!("image `{id_shown}`: {}", unreadable(&e)))
                })
        };
        let (class, image) = match checked {
            Ok(found) => found,
            Err(why) if bad.add(*line, &why) => continue,
            Err(_) => break,
        };
        if !bad.lines.is_empty() {
            continue;
        }
        hash.update((id.len() as u64).to_le_bytes());
        hash.update(id.as_bytes());
        hash.update((image.len() as u64).to_le_bytes());
        hash.update(&image);
        ids.push(id.clone());
        classes.push(class);
    }
    bad.into_result()?;
    Ok(Listing {
        ids,
        labels: classes,
        inputs: Inputs::Images(dir),
        sha256: hex::encode(hash.finalize()),
    })
}

/// A tabular set: one CSV with a column per feature and a `label` column.
fn read_rows(model: &LoadedModel, rows_csv: &str, max_rows: usize) -> Result<Listing, String> {
    let path = model.dir.join(rows_csv);
    let labels = &model.spec.labels;
    let mut hash = Sha256::new();
    let (csv, bytes) = read_csv(&path, max_rows)?;
    hash.update(&bytes);
    let features = &model
        .spec
        .tabular
        .as_ref()
        .ok_or("a tabular reference set for an image model")?
        .features;
    let label_col = column(&csv, &path, "label")?;
    let cols: Vec<usize> = features
        .iter()
        .map(|f| column(&csv, &path, f))
        .collect::<Result<_, _>>()?;
    let mut rows = Vec::with_capacity(csv.lines.len());
    let mut classes = Vec::with_capacity(csv.lines.len());
    let mut bad = BadLines::new(&path);
    for (line, cells) in &csv.lines {
        let checked = cells
            .get(label_col)
            .ok_or_else(|| "fewer cells than the header".to_string())
            .and_then(|label| label_of(label, labels).ok_or_else(|| bad_label(label, labels)))
            .and_then(|class| {
                let row = cols
                    .iter()
                    .map(|&c| {
                        cells
                            .get(c)
                            .and_then(|v| v.parse::<f32>().ok())
                            .filter(|v| v.is_finite())
                            .ok_or_else(|| format!("column `{}` is not a number", csv.header[c]))
                    })
                    .collect::<Result<Vec<f32>, String>>()?;
                Ok((class, row))
            });
        match checked {
            Ok((class, row)) => {
                classes.push(class);
                rows.push(row);
            }
            Err(why) if bad.add(*line, &why) => {}
            Err(_) => break,
        }
    }
    bad.into_result()?;
    Ok(Listing {
        ids: (0..rows.len()).map(|i| i.to_string()).collect(),
        labels: classes,
        inputs: Inputs::Rows(rows),
        sha256: hex::encode(hash.finalize()),
    })
}

/// Rows `start..end` of `inputs` (ids naming image files) as one input batch for `model`.
pub fn batch(
    inputs: &Inputs,
    ids: &[String],
    model: &LoadedModel,
    start: usize,
    end: usize,
    max_pixels: u64,
) -> Result<Tensor, String> {
    match inputs {
        Inputs::Rows(rows) => {
            let width = rows.first().map_or(0, Vec::len);
            let flat: Vec<f32> = rows[start..end].iter().flatten().copied().collect();
            Ok(Tensor::f32(vec![end - start, width], flat))
        }
        Inputs::Images(dir) => {
            let spec = model
                .spec
                .image
                .as_ref()
                .ok_or("an image reference set for a tabular model")?;
            let mut parts = Vec::with_capacity(end - start);
            for id in &ids[start..end] {
                let bytes = std::fs::read(dir.join(id)).map_err(|e| format!("image `{id}`: {e}"))?;
                let image = decode_image(&bytes, max_pixels).map_err(|e| format!("image `{id}`: {e}"))?;
                parts.push(prepare_image(&image, spec).tensor);
            }
            Tensor::concat_rows(parts).ok_or_else(|| "the images gave tensors of different shapes".to_string())
        }
    }
}

impl Listing {
    /// Rows `start..end` as one input batch for `model`.
    pub fn batch(&self, model: &LoadedModel, start: usize, end: usize, max_pixels: u64) -> Result<Tensor, String> {
        batch(&self.inputs, &self.ids, model, start, end, max_pixels)
    }

    /// Row `i`'s input as stored: the image file's bytes, or the feature row.
    pub fn image_path(&self, i: usize) -> Option<PathBuf> {
        match &self.inputs {
            Inputs::Images(dir) => Some(dir.join(&self.ids[i])),
            Inputs::Rows(_) => None,
        }
    }
}
