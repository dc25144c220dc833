//! ONNX external data: tensors whose values live in files beside `model.onnx` (how PyTorch's
//! exporter writes large models, and how every model over 2 GB must be stored).
//!
//! explaind reads every such tensor into the graph when the model is loaded, resolving its
//! `location` against the model's own folder, not the process's working directory. Resolving
//! once, at decode, means every reader of the graph sees the real weights: ONNX Runtime (which is
//! given the model as bytes and would otherwise look the files up relative to the working
//! directory), and explaind's own graph code (backward graphs, weight randomisation, LRP rules,
//! tree ensembles), which reads initializer values from the decoded protobuf.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Component, Path};

use crate::onnx::proto::{data_type, GraphProto, ModelProto, NodeProto, TensorProto};

/// `TensorProto.data_location` of a tensor stored in an external file.
const EXTERNAL: i32 = 1;

/// The largest model ONNX Runtime parses from memory: protobuf refuses a message of 2 GiB or more.
pub const MAX_INLINE_BYTES: u64 = i32::MAX as u64;

/// Reads every externally stored tensor of `model` (initializers, `Constant` values, subgraphs and
/// functions) from files under `folder` into the tensor itself. Returns whether any was found.
/// Errors name the tensor and the location, never the server's paths.
pub fn inline(model: &mut ModelProto, folder: &Path) -> Result<bool, String> {
    let mut total = 0u64;
    let mut found = false;
    let mut visit = |t: &mut TensorProto| -> Result<(), String> {
        if t.data_location != Some(EXTERNAL) {
            return Ok(());
        }
        found = true;
        let name = t.name.clone().unwrap_or_default();
        let data = read(t, folder).map_err(|why| format!("initializer `{name}`: {why}"))?;
        total = total.saturating_add(data.len() as u64);
        if total >= MAX_INLINE_BYTES {
            return Err(format!(
                "external data add up to more than {MAX_INLINE_BYTES} bytes (at initializer `{name}`): ONNX \
                 Runtime reads a model from memory as one protobuf message, limited to 2 GiB"
            ));
        }
        t.raw_data = Some(data.into());
        t.external_data.clear();
        t.data_location = None;
        Ok(())
    };
    if let Some(graph) = model.graph.as_mut() {
        graph_tensors(graph, &mut visit)?;
    }
    for function in &mut model.functions {
        nodes_tensors(&mut function.node, &mut visit)?;
    }
    Ok(found)
}

fn graph_tensors(
    graph: &mut GraphProto,
    visit: &mut impl FnMut(&mut TensorProto) -> Result<(), String>,
) -> Result<(), String> {
    for t in &mut graph.initializer {
        visit(t)?;
    }
    for sparse in &mut graph.sparse_initializer {
        for t in sparse.values.iter_mut().chain(sparse.indices.iter_mut()) {
            visit(t)?;
        }
    }
    nodes_tensors(&mut graph.node, visit)
}

fn nodes_tensors(
    nodes: &mut [NodeProto],
    visit: &mut impl FnMut(&mut TensorProto) -> Result<(), String>,
) -> Result<(), String> {
    for attr in nodes.iter_mut().flat_map(|n| n.attribute.iter_mut()) {
        for t in attr.t.iter_mut().chain(attr.tensors.iter_mut()) {
            visit(t)?;
        }
        for g in attr.g.iter_mut().map(|g| g.as_mut()).chain(attr.graphs.iter_mut()) {
            graph_tensors(g, visit)?;
        }
    }
    Ok(())
}

/// The bytes of one external tensor: `location` (a relative path inside `folder`), `offset` and
/// `length` (the rest of the file when absent), checked against the size its shape and type need.
fn read(t: &TensorProto, folder: &Path) -> Result<Vec<u8>, String> {
    let entry = |key: &str| {
        t.external_data
            .iter()
            .find(|e| e.key.as_deref() == Some(key))
            .and_then(|e| e.value.clone())
    };
    let number = |key: &str| -> Result<Option<u64>, String> {
        entry(key)
            .map(|v| {
                v.trim()
                    .parse::<u64>()
                    .map_err(|_| format!("external data `{key}` is not a byte count: `{v}`"))
            })
            .transpose()
    };
    let location = entry("location").ok_or("external data without a `location`")?;
    let relative = Path::new(&location);
    if location.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(format!("external data location `{location}` leaves the model's folder"));
    }
    let path = folder.join(relative);
    // A link inside the folder may still point out of it: compare the real paths.
    let (real_folder, real_path) = match (folder.canonicalize(), path.canonicalize()) {
        (Ok(f), Ok(p)) => (f, p),
        (_, Err(e)) => return Err(format!("external data file `{location}`: {}", io_reason(&e))),
        (Err(e), _) => return Err(format!("model folder: {}", io_reason(&e))),
    };
    if !real_path.starts_with(&real_folder) {
        return Err(format!("external data location `{location}` leaves the model's folder"));
    }
    let offset = number("offset")?.unwrap_or(0);
    let mut file = File::open(&real_path).map_err(|e| format!("external data file `{location}`: {}", io_reason(&e)))?;
    let file_len = file
        .metadata()
        .map_err(|e| format!("external data file `{location}`: {}", io_reason(&e)))?
        .len();
    let length = match number("length")? {
        Some(n) => n,
        None => file_len.saturating_sub(offset),
    };
    let end = offset
        .checked_add(length)
        .ok_or("external data offset + length overflow")?;
    if end > file_len {
        return Err(format!(
            "external data file `{location}` holds {file_len} bytes; the tensor needs bytes {offset}..{end}"
        ));
    }
    if let Some(expected) = expected_bytes(t) {
        if expected != length {
            return Err(format!(
                "external data in `{location}` is {length} bytes; shape {:?} of {} needs {expected}",
                t.dims,
                data_type::name(t.data_type.unwrap_or(0))
            ));
        }
    }
    if length >= MAX_INLINE_BYTES {
        return Err(format!(
            "external data in `{location}` is {length} bytes, over the 2 GiB a model may hold"
        ));
    }
    let mut data = vec![0u8; length as usize];
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(&mut data))
        .map_err(|e| format!("external data file `{location}`: {}", io_reason(&e)))?;
    Ok(data)
}

/// The bytes a tensor of this shape and fixed-size type holds; `None` for types without a fixed
/// size (strings) or a shape that overflows.
fn expected_bytes(t: &TensorProto) -> Option<u64> {
    let size: u64 = match t.data_type? {
        2 | 3 | 9 => 1,        // uint8, int8, bool
        4 | 5 | 10 | 16 => 2,  // uint16, int16, float16, bfloat16
        1 | 6 | 12 => 4,       // float, int32, uint32
        7 | 11 | 13 | 14 => 8, // int64, double, uint64, complex64
        15 => 16,              // complex128
        _ => return None,
    };
    t.dims
        .iter()
        .try_fold(size, |acc, &d| u64::try_from(d).ok().and_then(|d| acc.checked_mul(d)))
}

/// An I/O error without the path the OS may add (the caller names the file relative to the model).
fn io_reason(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::NotFound => "no such file".into(),
        std::io::ErrorKind::UnexpectedEof => "file too short".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::StringStringEntryProto;

    fn external(location: &str, offset: Option<u64>, length: Option<u64>, dims: Vec<i64>) -> ModelProto {
        let entry = |k: &str, v: String| StringStringEntryProto {
            key: Some(k.into()),
            value: Some(v),
        };
        let mut entries = vec![entry("location", location.into())];
        entries.extend(offset.map(|o| entry("offset", o.to_string())));
        entries.extend(length.map(|l| entry("length", l.to_string())));
        ModelProto {
            graph: Some(GraphProto {
                initializer: vec![TensorProto {
                    name: Some("w".into()),
                    dims,
                    data_type: Some(data_type::FLOAT),
                    external_data: entries,
                    data_location: Some(EXTERNAL),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// A fresh folder for one test (removed first if an earlier run left it).
    fn folder(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("explaind-external-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn folder_with(tag: &str, bytes: &[u8]) -> std::path::PathBuf {
        let dir = folder(tag);
        std::fs::write(dir.join("w.bin"), bytes).unwrap();
        dir
    }

    #[test]
    fn reads_the_slice_at_offset_and_clears_the_reference() {
        let floats: Vec<u8> = [0.0f32, 1.5, -2.0].iter().flat_map(|v| v.to_le_bytes()).collect();
        let dir = folder_with("slice", &floats);
        let mut model = external("w.bin", Some(4), Some(8), vec![2]);
        assert!(inline(&mut model, &dir).unwrap());
        let t = &model.graph.unwrap().initializer[0];
        assert_eq!(t.raw_data.as_deref(), Some(&floats[4..12]));
        assert!(t.external_data.is_empty() && t.data_location.is_none());
    }

    #[test]
    fn refuses_escapes_missing_files_and_short_files() {
        let dir = folder_with("refuse", &[0u8; 8]);
        for (location, dims, why) in [
            ("../w.bin", vec![2], "leaves the model's folder"),
            ("/etc/passwd", vec![2], "leaves the model's folder"),
            ("gone.bin", vec![2], "no such file"),
            ("w.bin", vec![3], "needs 12"),
        ] {
            let err = inline(&mut external(location, None, None, dims), &dir).unwrap_err();
            assert!(
                err.contains("initializer `w`") && err.contains(why),
                "{location}: {err}"
            );
            assert!(!err.contains(&*dir.to_string_lossy()), "no server path: {err}");
        }
        let err = inline(&mut external("w.bin", Some(4), Some(8), vec![2]), &dir).unwrap_err();
        assert!(err.contains("holds 8 bytes"), "{err}");
    }

    #[test]
    fn refuses_2_gib_of_weights_before_reading_them() {
        // A sparse file: 2 GiB long, no disk and no memory used.
        let dir = folder("big");
        let file = File::create(dir.join("w.bin")).unwrap();
        file.set_len(1 << 31).unwrap();
        let err = inline(&mut external("w.bin", None, None, vec![1 << 29]), &dir).unwrap_err();
        assert!(
            err.contains("initializer `w`") && err.contains("over the 2 GiB"),
            "{err}"
        );
    }

    #[test]
    fn refuses_a_link_that_leaves_the_folder() {
        let outside = folder_with("outside", &[0u8; 8]);
        let dir = folder("link");
        std::os::unix::fs::symlink(outside.join("w.bin"), dir.join("w.bin")).unwrap();
        let err = inline(&mut external("w.bin", None, None, vec![2]), &dir).unwrap_err();
        assert!(err.contains("leaves the model's folder"), "{err}");
    }
}
