//! The audit log's secrets (the signing key, the master key): read once at start from a file or an
//! environment variable, never from the config file itself, so the config holds no secret.

use super::StoreError;

/// Reads a 32-byte secret from `file:PATH` or `env:NAME` (64 hex digits, surrounding whitespace
/// ignored). `setting` names the config field in the errors, which never show the secret.
pub fn load(setting: &str, source: &str) -> Result<[u8; 32], StoreError> {
    let text = if let Some(path) = source.strip_prefix("file:") {
        // A key file is a line of hex: anything much larger is not one, and is not read whole.
        let meta =
            std::fs::metadata(path).map_err(|e| StoreError::new(format!("{setting}: cannot read {path}: {e}")))?;
        if meta.len() > 4096 {
            return Err(StoreError::new(format!(
                "{setting}: {path} is {} bytes, not a key (64 hex digits)",
                meta.len()
            )));
        }
        std::fs::read_to_string(path).map_err(|e| StoreError::new(format!("{setting}: cannot read {path}: {e}")))?
    } else if let Some(name) = source.strip_prefix("env:") {
        std::env::var(name)
            .map_err(|_| StoreError::new(format!("{setting}: environment variable {name} is not set")))?
    } else {
        return Err(StoreError::new(format!("{setting}: must be `file:PATH` or `env:NAME`")));
    };
    parse(text.trim()).ok_or_else(|| StoreError::new(format!("{setting}: the key must be 64 hex digits (32 bytes)")))
}

/// 64 hex digits as 32 bytes.
pub fn parse(hex_text: &str) -> Option<[u8; 32]> {
    let bytes = hex::decode(hex_text).ok()?;
    bytes.try_into().ok()
}

/// 32 fresh random bytes from the operating system.
pub fn random() -> [u8; 32] {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut key = [0u8; 32];
    chacha20poly1305::aead::OsRng.fill_bytes(&mut key);
    key
}

/// Secret key material that never shows in logs or debug output.
#[derive(Clone)]
pub struct Secret(pub [u8; 32]);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(..)")
    }
}
