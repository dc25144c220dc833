//! A reference set kept in the data directory, so that a restart loads it without running the
//! model: `reference/<model>.bin`, a JSON header (ids, labels, predictions, the hashes of the model,
//! checkpoints and files it was computed from) then the float arrays, little-endian. Written to a
//! temporary file and renamed, so a crash never leaves half a set.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::source::Inputs;
use super::{CheckpointRows, ReferenceSet};
use crate::onnx::head::Head;

const MAGIC: &[u8; 8] = b"EXPLREF1";

#[derive(Serialize, Deserialize)]
struct Header {
    ids: Vec<String>,
    labels: Vec<u32>,
    predictions: Vec<u32>,
    classes: usize,
    head: HeadRecord,
    embeddings: usize,
    checkpoints: Vec<CheckpointRecord>,
    model_sha256: String,
    source_sha256: String,
}

/// The head as kept (its JSON form, so a changed head is seen as a change).
#[derive(Serialize, Deserialize)]
struct HeadRecord(serde_json::Value);

#[derive(Serialize, Deserialize)]
struct CheckpointRecord {
    model: String,
    sha256: String,
    lr: f64,
    bias: bool,
    input: String,
    logits: String,
    features_len: usize,
    features: usize,
    grads: usize,
}

/// Where `model`'s set is kept.
pub fn path(data_dir: &Path, model: &str) -> PathBuf {
    data_dir.join("reference").join(format!("{model}.bin"))
}

/// Keeps `set` at `path`.
pub fn save(path: &Path, set: &ReferenceSet) -> Result<(), String> {
    let dir = path.parent().ok_or("no folder")?;
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let header = Header {
        ids: set.ids.clone(),
        labels: set.labels.clone(),
        predictions: set.predictions.clone(),
        classes: set.classes,
        head: HeadRecord(serde_json::to_value(&set.head).map_err(|e| e.to_string())?),
        embeddings: set.embeddings.len(),
        checkpoints: set
            .checkpoints
            .iter()
            .map(|c| CheckpointRecord {
                model: c.model.clone(),
                sha256: c.sha256.clone(),
                lr: c.lr,
                bias: c.bias,
                input: c.input.clone(),
                logits: c.logits.clone(),
                features_len: c.features_len,
                features: c.features.len(),
                grads: c.grads.len(),
            })
            .collect(),
        model_sha256: set.model_sha256.clone(),
        source_sha256: set.source_sha256.clone(),
    };
    let json = serde_json::to_vec(&header).map_err(|e| e.to_string())?;
    let tmp = path.with_extension("bin.tmp");
    let write = || -> std::io::Result<()> {
        let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
        out.write_all(MAGIC)?;
        out.write_all(&(json.len() as u64).to_le_bytes())?;
        out.write_all(&json)?;
        let mut floats = |v: &[f32]| out.write_all(bytemuck::cast_slice(v));
        floats(&set.embeddings)?;
        for c in &set.checkpoints {
            floats(&c.features)?;
            floats(&c.grads)?;
        }
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().map_err(|e| format!("cannot write {}: {e}", path.display()))
}

/// The file's magic, its JSON header and the head in it; the header's float counts are checked
/// against the file's size before anything is allocated for them.
fn read_header(file: &mut impl Read, path: &Path) -> Result<(Header, Head), String> {
    let size = std::fs::metadata(path).map_err(|e| e.to_string())?.len();
    let mut magic = [0u8; 8];
    let mut len = [0u8; 8];
    file.read_exact(&mut magic).map_err(|e| e.to_string())?;
    if &magic != MAGIC {
        return Err("not a reference set file".into());
    }
    file.read_exact(&mut len).map_err(|e| e.to_string())?;
    let len = u64::from_le_bytes(len);
    if len > size {
        return Err("truncated header".into());
    }
    let mut json = vec![0u8; len as usize];
    file.read_exact(&mut json).map_err(|e| e.to_string())?;
    let mut header: Header = serde_json::from_slice(&json).map_err(|e| e.to_string())?;
    let head: Head = serde_json::from_value(std::mem::take(&mut header.head.0)).map_err(|e| e.to_string())?;
    let floats_total = header.embeddings as u64
        + header
            .checkpoints
            .iter()
            .map(|c| c.features as u64 + c.grads as u64)
            .sum::<u64>();
    // Sizes from the header are checked against the file before anything is allocated.
    if 16 + len + floats_total * 4 != size {
        return Err("the file's size does not match its header".into());
    }
    Ok((header, head))
}

/// The set kept at `path` (`None` when there is none), its rows' inputs from `inputs`.
pub fn load(path: &Path, inputs: Inputs) -> Result<Option<ReferenceSet>, String> {
    let mut file = match std::fs::File::open(path) {
        Ok(f) => std::io::BufReader::new(f),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let (header, head) = read_header(&mut file, path)?;
    let mut floats = |n: usize| -> Result<Vec<f32>, String> {
        let mut v = vec![0f32; n];
        file.read_exact(bytemuck::cast_slice_mut(&mut v))
            .map_err(|e| e.to_string())?;
        Ok(v)
    };
    let embeddings = floats(header.embeddings)?;
    let mut checkpoints = Vec::new();
    for c in header.checkpoints {
        checkpoints.push(CheckpointRows {
            features: floats(c.features)?,
            grads: floats(c.grads)?,
            model: c.model,
            sha256: c.sha256,
            lr: c.lr,
            bias: c.bias,
            input: c.input,
            logits: c.logits,
            features_len: c.features_len,
        });
    }
    let n = header.ids.len();
    let consistent = header.labels.len() == n
        && header.predictions.len() == n
        && checkpoints
            .iter()
            .all(|c| c.features.len() == n * c.features_len && c.grads.len() == n * header.classes)
        && (embeddings.is_empty() || embeddings.len() == n * head.embedding_len)
        && (!embeddings.is_empty() || !checkpoints.is_empty());
    if !consistent {
        return Err("the header's counts disagree".into());
    }
    let listing = super::source::Listing {
        ids: header.ids,
        labels: header.labels,
        inputs,
        sha256: header.source_sha256,
    };
    let mut set = ReferenceSet::new(
        listing,
        header.predictions,
        header.classes,
        head,
        embeddings,
        checkpoints,
        header.model_sha256,
    );
    set.loaded = true;
    Ok(Some(set))
}
