//! Signed checkpoints: an Ed25519 signature over the chain's tip (seq, hash, time), so that cutting
//! off the newest records, or rewriting the chain, is seen by anyone holding the public key. A
//! checkpoint names its key by id, and verification accepts the current key and the configured
//! earlier ones (rotation).

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::Serialize;
use sha2::{Digest, Sha256};
use utoipa::ToSchema;

use super::secret::Secret;
use super::StoreError;

/// What a checkpoint vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = CheckpointMark)]
pub enum Mark {
    /// The tip at the time: records up to `seq` existed, the last with this hash.
    Tip,
    /// Retention: records up to `seq` were removed on purpose; the chain goes on from `hash`.
    Base,
}

impl Mark {
    pub fn name(self) -> &'static str {
        match self {
            Mark::Tip => "tip",
            Mark::Base => "base",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "tip" => Some(Mark::Tip),
            "base" => Some(Mark::Base),
            _ => None,
        }
    }
}

/// A signed statement about the chain.
#[derive(Debug, Clone, Serialize, ToSchema)]
// `Checkpoint` names a model checkpoint of the influence methods in the document.
#[schema(as = AuditCheckpoint)]
pub struct Checkpoint {
    /// `tip`, or `base` (where the chain starts after retention removed older records).
    pub mark: Mark,
    /// The record's position in the chain.
    pub seq: i64,
    /// That record's chain hash.
    pub hash: String,
    /// When it was signed (milliseconds since 1970).
    pub time_ms: i64,
    /// When it was signed (RFC 3339).
    pub time: String,
    /// Which key signed it: the first 16 hex digits of the sha256 of its public key.
    pub key_id: String,
    /// Ed25519 signature (hex) over [`statement`].
    pub signature: String,
}

/// The bytes a checkpoint's signature covers.
pub fn statement(mark: Mark, seq: i64, hash: &str, time_ms: i64, key_id: &str) -> String {
    format!(
        "explaind audit checkpoint v1\nmark={}\nseq={seq}\nhash={hash}\ntime_ms={time_ms}\nkey_id={key_id}\n",
        mark.name()
    )
}

/// The id of a public key.
pub fn key_id(public: &VerifyingKey) -> String {
    hex::encode(&Sha256::digest(public.as_bytes())[..8])
}

/// RFC 3339 time of milliseconds since 1970.
pub fn rfc3339(time_ms: i64) -> String {
    let t = SystemTime::UNIX_EPOCH + Duration::from_millis(time_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// The configured signing key.
pub struct Signer {
    key: SigningKey,
    id: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({})", self.id)
    }
}

impl Signer {
    /// A signer over a 32-byte secret.
    pub fn new(secret: &Secret) -> Self {
        let key = SigningKey::from_bytes(&secret.0);
        let id = key_id(&key.verifying_key());
        Self { key, id }
    }

    pub fn public(&self) -> VerifyingKey {
        self.key.verifying_key()
    }

    /// Signs (mark, seq, hash) now.
    pub fn sign(&self, mark: Mark, seq: i64, hash: &str, time_ms: i64) -> Checkpoint {
        let signature = self.key.sign(statement(mark, seq, hash, time_ms, &self.id).as_bytes());
        Checkpoint {
            mark,
            seq,
            hash: hash.to_string(),
            time_ms,
            time: rfc3339(time_ms),
            key_id: self.id.clone(),
            signature: hex::encode(signature.to_bytes()),
        }
    }
}

/// A public key as verification and exports show it.
#[derive(Debug, Clone, Serialize, ToSchema)]
#[schema(as = AuditPublicKey)]
pub struct PublicKey {
    /// The key's id, as checkpoints name it.
    pub key_id: String,
    /// The Ed25519 public key (64 hex digits).
    pub public_key: String,
    /// Whether this is the key signing new checkpoints (else an earlier, trusted one).
    pub current: bool,
}

/// The public keys whose checkpoints verify.
#[derive(Debug, Default)]
pub struct Keyring {
    keys: HashMap<String, (VerifyingKey, bool)>,
}

impl Keyring {
    /// The signer's key (when one is configured) and the trusted earlier keys (hex).
    pub fn new(signer: Option<&Signer>, trusted: &[String]) -> Result<Self, StoreError> {
        let mut keys = HashMap::new();
        for hex_key in trusted {
            let bytes = super::secret::parse(hex_key)
                .ok_or_else(|| StoreError::new("audit_trusted_keys: a public key is 64 hex digits"))?;
            let key = VerifyingKey::from_bytes(&bytes)
                .map_err(|_| StoreError::new(format!("audit_trusted_keys: {hex_key} is not an Ed25519 public key")))?;
            keys.insert(key_id(&key), (key, false));
        }
        if let Some(s) = signer {
            keys.insert(s.id.clone(), (s.public(), true));
        }
        Ok(Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys, current first.
    pub fn public_keys(&self) -> Vec<PublicKey> {
        let mut list: Vec<PublicKey> = self
            .keys
            .iter()
            .map(|(id, (key, current))| PublicKey {
                key_id: id.clone(),
                public_key: hex::encode(key.as_bytes()),
                current: *current,
            })
            .collect();
        list.sort_by(|a, b| b.current.cmp(&a.current).then(a.key_id.cmp(&b.key_id)));
        list
    }

    /// Checks a checkpoint's signature; the error says why it is refused.
    pub fn check(&self, c: &Checkpoint) -> Result<(), String> {
        let (key, _) = self.keys.get(&c.key_id).ok_or_else(|| {
            format!(
                "checkpoint at seq {} is signed by key {}, which is neither the signing key nor in audit_trusted_keys",
                c.seq, c.key_id
            )
        })?;
        let bad = || {
            format!(
                "checkpoint at seq {}: its signature does not verify (the checkpoint was altered)",
                c.seq
            )
        };
        let bytes: [u8; 64] = hex::decode(&c.signature)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(bad)?;
        let message = statement(c.mark, c.seq, &c.hash, c.time_ms, &c.key_id);
        key.verify_strict(message.as_bytes(), &Signature::from_bytes(&bytes))
            .map_err(|_| bad())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_verifies_until_any_signed_field_changes() {
        let signer = Signer::new(&Secret([7; 32]));
        let ring = Keyring::new(Some(&signer), &[]).unwrap();
        let c = signer.sign(Mark::Tip, 42, "ab", 1000);
        assert_eq!(ring.check(&c), Ok(()));
        for altered in [
            Checkpoint { seq: 41, ..c.clone() },
            Checkpoint {
                hash: "ac".into(),
                ..c.clone()
            },
            Checkpoint {
                time_ms: 1001,
                ..c.clone()
            },
            Checkpoint {
                mark: Mark::Base,
                ..c.clone()
            },
        ] {
            assert!(ring.check(&altered).unwrap_err().contains("altered"), "{altered:?}");
        }
        // Another key's checkpoint is refused unless that key is trusted.
        let old = Signer::new(&Secret([8; 32]));
        let theirs = old.sign(Mark::Tip, 1, "ab", 1);
        assert!(ring.check(&theirs).unwrap_err().contains("audit_trusted_keys"));
        let trusted = Keyring::new(Some(&signer), &[hex::encode(old.public().as_bytes())]).unwrap();
        assert_eq!(trusted.check(&theirs), Ok(()));
    }
}
