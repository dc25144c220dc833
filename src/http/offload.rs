//! Where a request's CPU work runs (JSON and base64 decoding, image decoding, hashing, drawing the
//! answer): on tokio's blocking pool when it is large, so the async threads stay free for other
//! clients; where it is when it is small, since for a 28x28 image the hops to another thread and
//! back (context switches) cost more than the work.

use super::error::ApiError;
use super::input::RawInput;

/// Work over at most this many bytes (or pixels x 4) runs inline: tens of microseconds.
pub const INLINE_BYTES: usize = 64 * 1024;

/// Runs `work`, sized `size` bytes, inline or on the blocking pool.
pub async fn cpu<T, F>(size: usize, work: F) -> Result<T, ApiError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    if size <= INLINE_BYTES {
        return Ok(work());
    }
    tokio::task::spawn_blocking(work).await.map_err(ApiError::internal)
}

/// The bytes decoding `raw` produces: an image's pixels x 4 from its header (unreadable headers
/// count as large: decoding them is left to the blocking pool), a feature vector's size.
pub fn decoded_size(raw: &RawInput) -> usize {
    match raw {
        RawInput::Image(bytes) => image::ImageReader::new(std::io::Cursor::new(bytes))
            .with_guessed_format()
            .ok()
            .and_then(|r| r.into_dimensions().ok())
            .map_or(usize::MAX, |(w, h)| {
                (w as usize).saturating_mul(h as usize).saturating_mul(4)
            }),
        RawInput::Features(_) => 1024,
        // Tokenizing and embedding: a few hundred bytes of rows per byte of text at most.
        RawInput::Text(text) => text.len().saturating_mul(256),
        RawInput::Row(values) => values.len().saturating_mul(4),
    }
}
