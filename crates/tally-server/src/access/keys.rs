//! API keys in memory: found by their public id, checked by the hash of their secret in
//! constant time, revoked at once.
//!
//! The store is the truth; this ring is loaded from it at start and changed only through the
//! key RPCs, each of which writes the store first (durably) and the ring after, so a key the
//! ring accepts is one the store holds unrevoked.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tally_proto::keys::KEY_PREFIX;
use tally_proto::{Grant, ProtocolError};

use crate::store::KeyRecord;

/// Characters of a key's public id (9 random bytes).
const ID_CHARS: usize = 12;
/// Characters of a key's secret (32 random bytes).
const SECRET_CHARS: usize = 43;

/// A key the ring accepts.
struct Entry {
    name: String,
    secret_hash: [u8; 32],
    grants: Arc<[Grant]>,
    revoked: bool,
}

/// What a valid key stands for.
#[derive(Debug)]
pub(crate) struct KeyPrincipal {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) grants: Arc<[Grant]>,
}

/// The server's API keys, by id.
#[derive(Default)]
pub(crate) struct KeyRing {
    by_id: RwLock<HashMap<String, Entry>>,
}

impl KeyRing {
    /// A ring of the stored keys. A stored key whose grants no longer parse is kept revoked
    /// (refused), and logged.
    pub(crate) fn new(records: &[KeyRecord]) -> Self {
        let ring = Self::default();
        for record in records {
            ring.insert(record);
        }
        ring
    }

    /// Whether any key was ever made (revoked ones count: auth stays on once it was on).
    pub(crate) fn is_empty(&self) -> bool {
        self.read().is_empty()
    }

    pub(crate) fn insert(&self, record: &KeyRecord) {
        let (grants, broken) = match Grant::parse_all(&record.grants) {
            Ok(grants) => (grants, false),
            Err(error) => {
                tracing::error!(key = %record.name, %error, "stored API key has invalid grants; it is refused");
                (Vec::new(), true)
            }
        };
        let entry = Entry {
            name: record.name.clone(),
            secret_hash: record.secret_hash,
            grants: grants.into(),
            revoked: record.revoked_at_ms.is_some() || broken,
        };
        self.write().insert(record.id.clone(), entry);
    }

    /// Whether a key with public id `id` is held (revoked or not).
    pub(crate) fn contains(&self, id: &str) -> bool {
        self.read().contains_key(id)
    }

    /// Whether the key with public id `id` is revoked (or unknown).
    pub(crate) fn is_revoked(&self, id: &str) -> bool {
        self.read().get(id).is_none_or(|entry| entry.revoked)
    }

    pub(crate) fn revoke(&self, id: &str) {
        if let Some(entry) = self.write().get_mut(id) {
            entry.revoked = true;
        }
    }

    /// The principal of `key`, or why it is refused (never naming the key).
    pub(crate) fn check(&self, key: &str) -> Result<KeyPrincipal, String> {
        let invalid = || "the API key is not valid (unknown or mistyped)".to_owned();
        let rest = key.strip_prefix(KEY_PREFIX).ok_or_else(invalid)?;
        if rest.len() != ID_CHARS + SECRET_CHARS || !rest.is_ascii() {
            return Err(invalid());
        }
        let (id, secret) = rest.split_at(ID_CHARS);
        let hash = hash_secret(secret);
        let ring = self.read();
        let entry = ring.get(id).ok_or_else(invalid)?;
        if !bool::from(entry.secret_hash.ct_eq(&hash)) {
            return Err(invalid());
        }
        if entry.revoked {
            return Err(format!("the API key {:?} was revoked", entry.name));
        }
        Ok(KeyPrincipal {
            id: id.to_owned(),
            name: entry.name.clone(),
            grants: Arc::clone(&entry.grants),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave a half-written map (inserts are single
        // calls), so a poisoned lock is still good.
        self.by_id.read().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Entry>> {
        self.by_id.write().unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A new key: its text (shown once) and its record (the id and the secret's hash only).
///
/// # Errors
/// When the operating system has no randomness to give.
pub fn new_key(
    name: &str,
    grants: &[Grant],
    created_at_ms: i64,
) -> Result<(String, KeyRecord), ProtocolError> {
    let mut id_bytes = [0_u8; 9];
    let mut secret_bytes = [0_u8; 32];
    getrandom::fill(&mut id_bytes).and_then(|()| getrandom::fill(&mut secret_bytes)).map_err(
        |error| {
            ProtocolError::new(
                tally_proto::ErrorCode::Internal,
                format!("no randomness for a key: {error}"),
            )
        },
    )?;
    let id = URL_SAFE_NO_PAD.encode(id_bytes);
    let secret = URL_SAFE_NO_PAD.encode(secret_bytes);
    let record = KeyRecord {
        id: id.clone(),
        name: name.to_owned(),
        secret_hash: hash_secret(&secret),
        grants: grants.iter().map(ToString::to_string).collect(),
        created_at_ms,
        revoked_at_ms: None,
    };
    Ok((format!("{KEY_PREFIX}{id}{secret}"), record))
}

fn hash_secret(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_works_until_revoked_and_a_changed_one_never() {
        let grants = Grant::parse_all(&["likes:*=read"]).unwrap();
        let (key, record) = new_key("backend", &grants, 1).unwrap();
        assert_eq!(key.len(), KEY_PREFIX.len() + ID_CHARS + SECRET_CHARS);
        assert!(!record.grants.is_empty());
        let ring = KeyRing::new(std::slice::from_ref(&record));
        assert_eq!(ring.check(&key).map(|p| p.name).unwrap(), "backend");
        let mut altered = key.clone();
        altered.pop();
        altered.push(if key.ends_with('A') { 'B' } else { 'A' });
        assert!(ring.check(&altered).unwrap_err().contains("not valid"));
        assert!(ring.check("tally_short").is_err());
        ring.revoke(&record.id);
        assert!(ring.check(&key).unwrap_err().contains("revoked"));
    }
}
