//! Fitted patterns (PatternNet, PatternAttribution) kept per model and data: in memory, and on disk
//! as `{model sha256}-{data sha256}.pb` under `data_dir/patterns`, so a restart reads them back
//! instead of fitting again. A file that cannot be read is ignored (and fitted again).
//!
//! One fit at a time per model and data: whoever finds no patterns claims the fit
//! ([`PatternStore::claim`]); a second request for them meanwhile waits for that fit (checking
//! its own deadline) and uses its patterns rather than fit them twice. A fit that fails hands the
//! claim to the next waiter.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::onnx::patterns::Patterns;

/// Patterns by (model sha256, data digest), with their folder.
#[derive(Debug, Default)]
pub struct PatternStore {
    dir: Option<PathBuf>,
    kept: Mutex<HashMap<(String, u64), Arc<Patterns>>>,
    fitting: Arc<Fitting>,
    /// `[patterns]` folders' hashes by path, taken once (at start, or by the first request that
    /// needs them): hashing a folder reads every image in it.
    folders: Mutex<HashMap<PathBuf, String>>,
}

/// The fits under way, and a signal when one ends.
#[derive(Debug, Default)]
struct Fitting {
    keys: Mutex<HashSet<(String, u64)>>,
    ended: Condvar,
}

/// How often a request waiting for another's fit checks its own deadline.
const WAIT: Duration = Duration::from_millis(50);

/// What [`PatternStore::claim`] found.
#[derive(Debug)]
pub enum Claim {
    /// The patterns, kept (in memory, on disk, or fitted by another request while this one waited).
    Kept(Arc<Patterns>),
    /// None are kept and no one else is fitting them: the holder fits them (then
    /// [`PatternStore::put`]); dropping the claim lets the next waiter fit.
    Fit(FitClaim),
}

/// The right to fit one model's patterns on one data set, released when dropped.
#[derive(Debug)]
pub struct FitClaim {
    fitting: Arc<Fitting>,
    key: (String, u64),
}

impl Drop for FitClaim {
    fn drop(&mut self) {
        self.fitting
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.key);
        self.fitting.ended.notify_all();
    }
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
            fitting: Arc::default(),
            folders: Mutex::default(),
        }
    }

    /// The hash of the folder `dir`: the one taken before, else `hash()`'s (kept when it succeeds).
    /// A folder's images changed while the service runs are seen at the next start.
    pub fn folder_sha256<E>(&self, dir: &Path, hash: impl FnOnce() -> Result<String, E>) -> Result<String, E> {
        if let Some(sha) = self.folders.lock().unwrap_or_else(|p| p.into_inner()).get(dir) {
            return Ok(sha.clone());
        }
        // Hashed outside the lock: two first requests may both hash, and agree.
        let sha = hash()?;
        self.folders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(dir.to_path_buf(), sha.clone());
        Ok(sha)
    }

    /// The kept patterns, or the claim to fit them; while another request fits them, waits for
    /// it, calling `check` every few milliseconds (a deadline or a cancellation ends the wait with
    /// its error).
    pub fn claim<E>(
        &self,
        model_sha256: &str,
        data_sha256: &str,
        mut check: impl FnMut() -> Result<(), E>,
    ) -> Result<Claim, E> {
        let key = (model_sha256.to_string(), digest(data_sha256));
        loop {
            if let Some(kept) = self.get(model_sha256, data_sha256) {
                return Ok(Claim::Kept(kept));
            }
            let mut keys = self.fitting.keys.lock().unwrap_or_else(|p| p.into_inner());
            // Looked at again under the lock: a fit that ended between `get` and here kept its
            // patterns before it released its claim.
            if let Some(kept) = self.by_digest(model_sha256, key.1) {
                return Ok(Claim::Kept(kept));
            }
            if keys.insert(key.clone()) {
                return Ok(Claim::Fit(FitClaim {
                    fitting: self.fitting.clone(),
                    key,
                }));
            }
            let (guard, _) = self
                .fitting
                .ended
                .wait_timeout(keys, WAIT)
                .unwrap_or_else(|p| p.into_inner());
            drop(guard);
            check()?;
        }
    }

    /// Whether a fit of these patterns is under way.
    pub fn is_fitting(&self, model_sha256: &str, data_sha256: &str) -> bool {
        self.fitting
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(model_sha256.to_string(), digest(data_sha256)))
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

#[cfg(test)]
mod tests {
    use super::*;

    const MODEL: &str = "ab12";
    const DATA: &str = "00000000000000ff";

    /// A claim holds the fit (`fitting` to every reader) until it is dropped; a waiter then finds
    /// the patterns the holder kept, or, when the holder kept none, takes the fit over.
    #[test]
    fn a_claim_is_fitting_until_dropped_and_a_waiter_gets_what_it_kept() {
        let store = Arc::new(PatternStore::new(None));
        let Ok::<_, ()>(Claim::Fit(first)) = store.claim(MODEL, DATA, || Ok(())) else {
            panic!("an empty store gives the claim");
        };
        assert!(store.is_fitting(MODEL, DATA));
        // A waiter gives up through its check (a deadline), and the fit stays claimed.
        assert_eq!(store.claim(MODEL, DATA, || Err("deadline")).err(), Some("deadline"));
        assert!(store.is_fitting(MODEL, DATA));

        let waiter = {
            let store = store.clone();
            std::thread::spawn(move || matches!(store.claim(MODEL, DATA, || Ok::<_, ()>(())), Ok(Claim::Kept(_))))
        };
        std::thread::sleep(Duration::from_millis(20));
        store.put(MODEL, DATA, Patterns::default());
        drop(first);
        assert!(waiter.join().unwrap(), "the waiter got the kept patterns");
        assert!(!store.is_fitting(MODEL, DATA));

        // A holder that fails keeps nothing: the next claim fits.
        let other = "00000000000000fe";
        let Ok::<_, ()>(Claim::Fit(failed)) = store.claim(MODEL, other, || Ok(())) else {
            panic!("new data gives the claim");
        };
        drop(failed);
        assert!(matches!(
            store.claim(MODEL, other, || Ok::<_, ()>(())),
            Ok(Claim::Fit(_))
        ));
    }
}
