//! Pure pixel code shared by preprocessing (`runtime`) and drawing (`render`): resizing images
//! and maps, and the geometry that maps a model's input grid back onto the original image. It
//! knows no model, request or session.

mod geometry;
pub mod letterbox;
pub mod region;
pub mod resample;

pub use geometry::Geometry;
pub use letterbox::{letterbox, Anchor, Letterbox};
