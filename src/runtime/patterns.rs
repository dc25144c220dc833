//! Fitted patterns (PatternNet, PatternAttribution) kept per model and data: in memory, and on disk
//! as `{model sha256}-{data sha256}.pb` under `data_dir/patterns`, so a restart reads them back
//! instead of fitting again. A file that cannot be read is ignored (and fitted again).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::onnx::patterns::Patterns;

/// Patterns by (model sha256, data digest), with their folder.
#[derive(Debug, Default)]
pub struct PatternStore {
    dir: Option<PathBuf>,
    kept: Mutex<HashMap<(String, u64), Arc<Patterns>>>,
}

/// The digest a data hash (hex sha256) keys backward models by: its first 64 bits.
pub fn digest(data_sha256: &str) -> u64 {
    data_sha256
        .get(..16)
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .unwrap_or(0)
}

fn is_hex(s: &str) -> bool {
    !s.is_empty() && s.len() <= 128 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

impl PatternStore {
    /// A store keeping its files under `dir` (none: memory only).
    pub fn new(dir: Option<PathBuf>) -> Self {
        Self {
            dir,
            kept: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, model_sha256: &str, data_sha256: &str) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        (is_hex(model_sha256) && is_hex(data_sha256)).then(|| dir.join(format!("{model_sha256}-{data_sha256}.pb")))
    }

    /// The patterns fitted for this model on this data: kept in memory, else read from disk.
    pub fn get(&self, model_sha256: &str, data_sha256: &str) -> Option<Arc<Patterns>> {
        let key = (model_sha256.to_string(), digest(data_sha256));
        if let Some(p) = self.kept.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return Some(p.clone());
        }
        let path = self.file(model_sha256, data_sha256)?;
        let bytes = std::fs::read(&path).ok()?;
        let Some(patterns) = Patterns::decode(&bytes) else {
            tracing::warn!(path = %path.display(), "pattern file unreadable; the patterns are fitted again");
            return None;
        };
        tracing::info!(path = %path.display(), layers = patterns.layers.len(), "patterns read from disk");
        let patterns = Arc::new(patterns);
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key, patterns.clone());
        Some(patterns)
    }

    /// The patterns kept in memory under a digest (what a backward build asks for).
    pub fn by_digest(&self, model_sha256: &str, digest: u64) -> Option<Arc<Patterns>> {
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&(model_sha256.to_string(), digest))
            .cloned()
    }

    /// Keeps freshly fitted patterns, in memory and (best effort) on disk.
    pub fn put(&self, model_sha256: &str, data_sha256: &str, patterns: Patterns) -> Arc<Patterns> {
        let patterns = Arc::new(patterns);
        if let Some(path) = self.file(model_sha256, data_sha256) {
            let written = path.parent().map_or(Ok(()), std::fs::create_dir_all).and_then(|()| {
                // Written aside and renamed, so a reader never sees half a file.
                let part = path.with_extension("part");
                std::fs::write(&part, patterns.encode())?;
                std::fs::rename(&part, &path)
            });
            match written {
                Ok(()) => tracing::info!(path = %path.display(), "patterns kept on disk"),
                Err(e) => tracing::warn!(path = %path.display(), error = %e, "patterns not kept on disk"),
            }
        }
        self.kept
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((model_sha256.to_string(), digest(data_sha256)), patterns.clone());
        patterns
    }
}
