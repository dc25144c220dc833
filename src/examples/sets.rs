//! The reference sets in force, one per model: each replaced whole, never edited, so a request
//! sees the old set or the new one. Held here, beside the models rather than inside the runtime's
//! registry, which knows no reference set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use super::ReferenceSet;

/// The reference sets in force, by model name, and the sets that failed to build at start.
#[derive(Debug, Default)]
pub struct Sets {
    sets: RwLock<HashMap<String, Arc<ReferenceSet>>>,
    failed: RwLock<BTreeMap<String, String>>,
}

impl Sets {
    /// The set in force for `model`, when it has one.
    pub fn get(&self, model: &str) -> Option<Arc<ReferenceSet>> {
        self.sets.read().unwrap_or_else(|p| p.into_inner()).get(model).cloned()
    }

    /// Puts `set` in force for `model` (whole: a request sees the old set or the new one); a
    /// failure recorded for it is over.
    pub fn put(&self, model: &str, set: Arc<ReferenceSet>) {
        self.sets
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_string(), set);
        self.failed.write().unwrap_or_else(|p| p.into_inner()).remove(model);
    }

    /// Records that `model`'s set could not be built or loaded, with why (shown to clients: it
    /// names files by their names only).
    pub fn fail(&self, model: &str, reason: String) {
        self.failed
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_string(), reason);
    }

    /// Why `model`'s set failed, when it did.
    pub fn failure(&self, model: &str) -> Option<String> {
        self.failed
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(model)
            .cloned()
    }

    /// Every failed set, by model name, with why.
    pub fn failed(&self) -> BTreeMap<String, String> {
        self.failed.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}
