//! The reference sets in force, one per model: each replaced whole, never edited, so a request
//! sees the old set or the new one. Held here, beside the models rather than inside the runtime's
//! registry, which knows no reference set.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::ReferenceSet;

/// The reference sets in force, by model name.
#[derive(Debug, Default)]
pub struct Sets(RwLock<HashMap<String, Arc<ReferenceSet>>>);

impl Sets {
    /// The set in force for `model`, when it has one.
    pub fn get(&self, model: &str) -> Option<Arc<ReferenceSet>> {
        self.0.read().unwrap_or_else(|p| p.into_inner()).get(model).cloned()
    }

    /// Puts `set` in force for `model` (whole: a request sees the old set or the new one).
    pub fn put(&self, model: &str, set: Arc<ReferenceSet>) {
        self.0
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(model.to_string(), set);
    }
}
