//! `[patterns]`: the data PatternNet and PatternAttribution fit their patterns on, where it is not
//! the reference set or the background rows: a folder of images next to the manifest.

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{FieldError, ManifestError, Task};

/// Where a model's patterns are fitted from (`[patterns]`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PatternSpec {
    /// Image models: a folder of images (every file in it, sorted by name), relative to the
    /// model's folder and inside it.
    pub images: Option<String>,
}

impl PatternSpec {
    /// The image folder, resolved against the model's folder `dir`.
    pub fn images_dir(&self, dir: &Path) -> Option<PathBuf> {
        self.images.as_ref().map(|i| dir.join(i))
    }
}

/// The folder must be relative, inside the model's folder (links followed), and an image model's.
pub(super) fn check(
    p: PatternSpec,
    task: Task,
    manifest_path: &Path,
    err: &FieldError,
) -> Result<PatternSpec, ManifestError> {
    let Some(images) = p.images.as_deref() else {
        return Ok(p);
    };
    if !task.takes_image() {
        return Err(err("patterns.images", "a folder of images serves image models".into()));
    }
    let leaves = || err("patterns.images", format!("`{images}` leaves the model's folder"));
    let relative = Path::new(images);
    if images.is_empty()
        || !relative
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(leaves());
    }
    let folder = manifest_path.parent().unwrap_or(Path::new("."));
    // A link inside the folder may still point out of it: compare the real paths.
    match (folder.canonicalize(), folder.join(relative).canonicalize()) {
        (Ok(f), Ok(d)) if !d.starts_with(&f) => Err(leaves()),
        (Ok(_), Ok(d)) if !d.is_dir() => Err(err("patterns.images", format!("`{images}` is not a folder"))),
        (Ok(_), Ok(_)) => Ok(p),
        _ => Err(err("patterns.images", format!("`{images}` cannot be read"))),
    }
}
