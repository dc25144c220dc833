//! Erasure that keeps the chain: a record's private values (the inputs, the maps, per-feature
//! attributions and values) are moved out of its body and encrypted with a key of its own subject
//! (or of the record alone), with XChaCha20-Poly1305; the body keeps the ciphertext, and the chain
//! hashes that. Destroying the key (crypto-shredding) leaves every hash intact and the values
//! unreadable. Keys live in their own table, outside the chain, wrapped by a master key when one is
//! configured.

use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use serde_json::{json, Map, Value};
use sha2::{Digest, Sha256};

use super::secret::{self, Secret};
use super::StoreError;

/// The AEAD, as records name it.
pub const ALG: &str = "xchacha20poly1305";

/// Where private values sit in a record's body (`*`: every element of an array). Everything else
/// (the model, method, parameters, targets and scores, the decision) stays readable after erasure.
const PRIVATE: &[&str] = &[
    "inputs/*/data",
    "targets/*/map",
    "targets/*/attributions",
    "targets/*/summary/top_features",
    "results/*/explanation/targets/*/map",
    "results/*/explanation/targets/*/attributions",
    "results/*/explanation/targets/*/summary/top_features",
];

/// A record's key as the store read it.
#[derive(Debug, Clone)]
pub enum Sealing {
    /// The record has no sealed part.
    None,
    /// The key of the record's sealed part.
    Key(Secret),
    /// The key was destroyed: the sealed part is erased.
    Erased,
    /// The key exists but cannot be unwrapped (another master key).
    Unreadable(String),
}

/// The key that wraps the data keys at rest.
#[derive(Debug, Clone)]
pub struct Master {
    key: Secret,
    id: String,
}

impl Master {
    pub fn new(key: Secret) -> Self {
        let id = hex::encode(&Sha256::digest(key.0)[..8]);
        Self { key, id }
    }

    /// The `wrap` column of keys wrapped by this master key.
    pub fn wrap_name(&self) -> String {
        format!("master:{}", self.id)
    }
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn encrypt(key: &Secret, aad: &[u8], plain: &[u8]) -> Result<(Vec<u8>, Vec<u8>), StoreError> {
    let nonce: [u8; 24] = {
        let r = secret::random();
        let mut n = [0u8; 24];
        n.copy_from_slice(&r[..24]);
        n
    };
    let cipher = XChaCha20Poly1305::new((&key.0).into());
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .map_err(|_| StoreError::new("encryption failed"))?;
    Ok((nonce.to_vec(), sealed))
}

fn decrypt(key: &Secret, aad: &[u8], nonce: &[u8], sealed: &[u8]) -> Option<Vec<u8>> {
    if nonce.len() != 24 {
        return None;
    }
    XChaCha20Poly1305::new((&key.0).into())
        .decrypt(XNonce::from_slice(nonce), Payload { msg: sealed, aad })
        .ok()
}

/// A data key as stored: (`key` column, `wrap` column). Bound to its row id so a wrapped key cannot
/// be moved to another row.
pub fn wrap(key: &Secret, key_id: &str, master: Option<&Master>) -> Result<(String, String), StoreError> {
    match master {
        None => Ok((hex::encode(key.0), "none".into())),
        Some(m) => {
            let (nonce, sealed) = encrypt(&m.key, key_id.as_bytes(), &key.0)?;
            Ok((b64().encode([nonce, sealed].concat()), m.wrap_name()))
        }
    }
}

/// A stored data key, unwrapped.
pub fn unwrap(stored: &str, wrap: &str, key_id: &str, master: Option<&Master>) -> Sealing {
    if wrap == "none" {
        return secret::parse(stored)
            .map(|k| Sealing::Key(Secret(k)))
            .unwrap_or_else(|| Sealing::Unreadable("the stored key is malformed".into()));
    }
    let Some(m) = master.filter(|m| m.wrap_name() == wrap) else {
        return Sealing::Unreadable(format!(
            "the key is wrapped by {wrap}, and audit_master_key is another key or unset"
        ));
    };
    let raw = b64().decode(stored).unwrap_or_default();
    let opened = (raw.len() > 24)
        .then(|| decrypt(&m.key, key_id.as_bytes(), &raw[..24], &raw[24..]))
        .flatten()
        .and_then(|k| <[u8; 32]>::try_from(k).ok());
    match opened {
        Some(k) => Sealing::Key(Secret(k)),
        None => Sealing::Unreadable("the wrapped key does not open".into()),
    }
}

/// The reference a subject is kept under: a hash, so the keys table and the erasure record do not
/// hold the subject's identifier itself (peppered with the master key when there is one, so a
/// short customer number cannot be found by trying them all).
pub fn subject_ref(subject: &str, master: Option<&Master>) -> String {
    let mut h = Sha256::new();
    h.update(b"explaind audit subject\n");
    if let Some(m) = master {
        h.update(m.key.0);
    }
    h.update(subject.as_bytes());
    hex::encode(h.finalize())
}

/// Moves the private values out of `body` (`record_id` binds them to it); returns whether any were
/// found and sealed under `key`.
pub fn seal(body: &mut Value, record_id: &str, key_id: &str, key: &Secret) -> Result<bool, StoreError> {
    let mut taken = Vec::new();
    for pattern in PRIVATE {
        let parts: Vec<&str> = pattern.split('/').collect();
        take(body, &parts, String::new(), &mut taken);
    }
    if taken.is_empty() {
        return Ok(false);
    }
    let plain = serde_json::to_vec(&taken)?;
    let (nonce, sealed) = encrypt(key, record_id.as_bytes(), &plain)?;
    body["sealed"] = json!({"alg": ALG, "key_id": key_id, "nonce": b64().encode(nonce),
                            "ciphertext": b64().encode(sealed)});
    Ok(true)
}

/// Removes what `parts` names under `at` (path `path`), collecting (JSON pointer, value).
fn take(at: &mut Value, parts: &[&str], path: String, out: &mut Vec<(String, Value)>) {
    let Some((first, rest)) = parts.split_first() else {
        return;
    };
    if *first == "*" {
        if let Some(list) = at.as_array_mut() {
            for (i, item) in list.iter_mut().enumerate() {
                take(item, rest, format!("{path}/{i}"), out);
            }
        }
        return;
    }
    let Some(object) = at.as_object_mut() else {
        return;
    };
    if rest.is_empty() {
        if let Some(v) = object.remove(*first) {
            out.push((format!("{path}/{first}"), v));
        }
    } else if let Some(inner) = object.get_mut(*first) {
        take(inner, rest, format!("{path}/{first}"), out);
    }
}

/// The record's body for readers: the sealed values put back when the key is there, else the
/// marker `"erased": true` (and the values absent). `sealed` keeps only the algorithm and key id.
pub fn open(body: &mut Value, record_id: &str, sealing: &Sealing) {
    let Some(sealed) = body.as_object_mut().and_then(|b| b.remove("sealed")) else {
        return;
    };
    let mut shown = Map::new();
    for key in ["alg", "key_id"] {
        shown.insert(key.into(), sealed[key].clone());
    }
    let mut erased = false;
    match sealing {
        Sealing::Erased => erased = true,
        Sealing::Unreadable(why) => {
            shown.insert("unreadable".into(), Value::String(why.clone()));
        }
        Sealing::None => {
            shown.insert("unreadable".into(), "the record's key is not in the keys table".into());
        }
        Sealing::Key(key) => {
            let field = |name: &str| sealed[name].as_str().and_then(|t| b64().decode(t).ok());
            let plain = field("nonce")
                .zip(field("ciphertext"))
                .and_then(|(nonce, text)| decrypt(key, record_id.as_bytes(), &nonce, &text))
                .and_then(|p| serde_json::from_slice::<Vec<(String, Value)>>(&p).ok());
            match plain {
                Some(values) => put_back(body, values),
                None => {
                    shown.insert("unreadable".into(), "the sealed part does not decrypt (altered)".into());
                }
            }
        }
    }
    body["sealed"] = Value::Object(shown);
    body["erased"] = Value::Bool(erased);
}

fn put_back(body: &mut Value, values: Vec<(String, Value)>) {
    for (pointer, value) in values {
        let Some((parent, name)) = pointer.rsplit_once('/') else {
            continue;
        };
        if let Some(Value::Object(o)) = body.pointer_mut(parent) {
            o.insert(name.to_string(), value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Value {
        json!({"id": "r1", "model": "m", "inputs": [{"sha256": "aa", "data": {"features": [1.0, 2.0]}}],
               "targets": [{"target": {"label": "x"}, "attributions": [0.5, -0.5],
                            "summary": {"top_features": [{"name": "a", "value": 1.0}], "r2": 0.9}}]})
    }

    #[test]
    fn sealed_values_come_back_with_the_key_and_are_gone_without_it() {
        let key = Secret([3; 32]);
        let mut body = record();
        assert!(seal(&mut body, "r1", "k1", &key).unwrap());
        let text = body.to_string();
        assert!(!text.contains("features") && !text.contains("top_features"), "{text}");
        assert_eq!(body["targets"][0]["summary"]["r2"], 0.9, "the rest stays readable");
        let mut opened = body.clone();
        open(&mut opened, "r1", &Sealing::Key(key.clone()));
        let mut expected = record();
        expected["sealed"] = json!({"alg": ALG, "key_id": "k1"});
        expected["erased"] = json!(false);
        assert_eq!(opened, expected);
        let mut erased = body.clone();
        open(&mut erased, "r1", &Sealing::Erased);
        assert_eq!(erased["erased"], true);
        assert!(erased["inputs"][0].get("data").is_none());
        // Sealed under another record's id: refused (the values are bound to their record).
        let mut moved = body.clone();
        open(&mut moved, "r2", &Sealing::Key(key));
        assert!(moved["sealed"]["unreadable"].is_string(), "{moved}");
    }

    #[test]
    fn wrapped_keys_open_only_with_their_master_key_and_row() {
        let master = Master::new(Secret([9; 32]));
        let key = Secret([4; 32]);
        let (stored, wrap_name) = wrap(&key, "k1", Some(&master)).unwrap();
        assert!(!stored.contains(&hex::encode(key.0)));
        assert!(matches!(unwrap(&stored, &wrap_name, "k1", Some(&master)), Sealing::Key(k) if k.0 == key.0));
        assert!(matches!(
            unwrap(&stored, &wrap_name, "k2", Some(&master)),
            Sealing::Unreadable(_)
        ));
        let other = Master::new(Secret([1; 32]));
        assert!(matches!(
            unwrap(&stored, &wrap_name, "k1", Some(&other)),
            Sealing::Unreadable(_)
        ));
        assert!(matches!(
            unwrap(&stored, &wrap_name, "k1", None),
            Sealing::Unreadable(_)
        ));
    }
}
