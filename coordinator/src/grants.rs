//! Grants the coordinator can recognise. Every `promote` it hands out
//! carries a grant: an HMAC-SHA256 over (group, epoch, instance, issue
//! time) under a key kept in the data directory, never in the store. An
//! agent serving as PRIMARY shows its grant in its heartbeats; a store
//! that does not know that PRIMARY (restored from an older copy) adopts
//! the claim only when the grant verifies, so a forged epoch is refused,
//! while grants this coordinator made after the copy was taken are still
//! recognised (the key outlives the store).
//!
//! `grant.keys` holds one key per line, `<id> <128 hex digits>`: the first
//! signs, every one verifies. `spot-coordinator grant-key rotate` puts a
//! new key first and keeps the previous ones (overlap: grants made under
//! them still verify) up to [`KEPT`].

use anyhow::Context;
use hmac::digest::KeyInit;
use hmac::digest::generic_array::GenericArray;
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// Keys kept after a rotation, the new one included.
pub const KEPT: usize = 3;
const FILE: &str = "grant.keys";
const VERSION: &str = "g1";
/// HMAC-SHA256's block size: a key of exactly that length is used as is.
const KEY_LEN: usize = 64;

/// Why a grant does not verify: stable codes for the audit log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("no grant presented")]
    Missing,
    #[error("the grant does not parse")]
    Malformed,
    #[error("the grant names a key this coordinator does not hold")]
    UnknownKey,
    #[error("the grant's MAC does not match its group, epoch and instance")]
    BadMac,
}

impl GrantError {
    pub fn code(self) -> &'static str {
        match self {
            GrantError::Missing => "grant_missing",
            GrantError::Malformed => "grant_malformed",
            GrantError::UnknownKey => "grant_unknown_key",
            GrantError::BadMac => "grant_bad_mac",
        }
    }
}

/// What a grant vouches for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grant<'a> {
    pub group: &'a str,
    pub epoch: u64,
    pub instance: &'a str,
    pub issued_ms: i64,
}

impl Grant<'_> {
    fn message(&self) -> String {
        format!(
            "spot-grant-{VERSION}\n{}\n{}\n{}\n{}",
            self.group, self.epoch, self.instance, self.issued_ms
        )
    }
}

#[derive(Clone)]
pub struct GrantKeys {
    /// (id, key); the first signs.
    keys: Vec<(String, [u8; KEY_LEN])>,
}

impl std::fmt::Debug for GrantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.ids().collect();
        f.debug_struct("GrantKeys").field("ids", &ids).finish()
    }
}

fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(FILE)
}

fn new_key() -> (String, [u8; KEY_LEN]) {
    let mut rng = rand::rng();
    let mut key = [0u8; KEY_LEN];
    rng.fill_bytes(&mut key);
    let mut id = [0u8; 4];
    rng.fill_bytes(&mut id);
    (hex::encode(id), key)
}

fn mac(key: &[u8; KEY_LEN], message: &str) -> Hmac<Sha256> {
    let mut m = <Hmac<Sha256> as KeyInit>::new(GenericArray::from_slice(key));
    m.update(message.as_bytes());
    m
}

impl GrantKeys {
    /// The keys in `data_dir`, or a new key kept there (mode 0600).
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let p = path(data_dir);
        match std::fs::read_to_string(&p) {
            Ok(text) => Self::parse(&text).with_context(|| format!("reading {}", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let keys = GrantKeys {
                    keys: vec![new_key()],
                };
                keys.save(data_dir)?;
                tracing::info!(path = %p.display(), key = %keys.keys[0].0, "generated the grant key");
                Ok(keys)
            }
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    /// Put a new signing key first, keeping up to [`KEPT`] in all; returns
    /// the new key's id. The running coordinator takes it at its next
    /// start; until then it signs with the previous key, which the new
    /// file still holds.
    pub fn rotate(data_dir: &Path) -> anyhow::Result<String> {
        let mut keys = Self::load_or_create(data_dir)?;
        let key = new_key();
        let id = key.0.clone();
        keys.keys.insert(0, key);
        keys.keys.truncate(KEPT);
        keys.save(data_dir)?;
        Ok(id)
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, hexkey) = line
                .split_once(' ')
                .with_context(|| format!("line {}: want `<id> <128 hex digits>`", n + 1))?;
            let bytes = hex::decode(hexkey.trim())
                .ok()
                .and_then(|b| <[u8; KEY_LEN]>::try_from(b).ok())
                .with_context(|| format!("line {}: the key must be 128 hex digits", n + 1))?;
            keys.push((id.to_owned(), bytes));
        }
        anyhow::ensure!(!keys.is_empty(), "no key in the file");
        Ok(GrantKeys { keys })
    }

    fn save(&self, data_dir: &Path) -> anyhow::Result<()> {
        let mut text = String::from("# spot-coordinator grant keys: the first signs, all verify\n");
        for (id, key) in &self.keys {
            text.push_str(&format!("{id} {}\n", hex::encode(key)));
        }
        let p = path(data_dir);
        spot_runtime::fs::write_private(&p, &text)
            .with_context(|| format!("writing {}", p.display()))
    }

    /// The ids of the keys, the signing one first.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.keys.iter().map(|(id, _)| id.as_str())
    }

    /// The id of the key that signs.
    pub fn signing_id(&self) -> &str {
        &self.keys[0].0
    }

    /// `g1.<key id>.<issued ms>.<hex MAC>`.
    pub fn sign(&self, g: &Grant) -> String {
        let (id, key) = &self.keys[0];
        let tag = mac(key, &g.message()).finalize().into_bytes();
        format!("{VERSION}.{id}.{}.{}", g.issued_ms, hex::encode(tag))
    }

    /// Whether `grant` was made by one of these keys for this group, epoch
    /// and instance; returns its issue time.
    pub fn verify(
        &self,
        grant: Option<&str>,
        group: &str,
        epoch: u64,
        instance: &str,
    ) -> Result<i64, GrantError> {
        let grant = grant.ok_or(GrantError::Missing)?;
        let mut parts = grant.split('.');
        let (Some(VERSION), Some(id), Some(issued), Some(tag), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(GrantError::Malformed);
        };
        let issued_ms: i64 = issued.parse().map_err(|_| GrantError::Malformed)?;
        let tag = hex::decode(tag).map_err(|_| GrantError::Malformed)?;
        let (_, key) = self
            .keys
            .iter()
            .find(|(k, _)| k == id)
            .ok_or(GrantError::UnknownKey)?;
        let g = Grant {
            group,
            epoch,
            instance,
            issued_ms,
        };
        // Constant time, by the hmac crate.
        mac(key, &g.message())
            .verify_slice(&tag)
            .map_err(|_| GrantError::BadMac)?;
        Ok(issued_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn g(epoch: u64) -> Grant<'static> {
        Grant {
            group: "web",
            epoch,
            instance: "i-1",
            issued_ms: 1_000,
        }
    }

    #[test]
    fn a_grant_verifies_for_what_it_names_only() {
        let d = tempfile::tempdir().unwrap();
        let keys = GrantKeys::load_or_create(d.path()).unwrap();
        let s = keys.sign(&g(7));
        assert_eq!(keys.verify(Some(&s), "web", 7, "i-1"), Ok(1_000));
        // Another epoch, instance or group: refused.
        assert_eq!(
            keys.verify(Some(&s), "web", 8, "i-1"),
            Err(GrantError::BadMac)
        );
        assert_eq!(
            keys.verify(Some(&s), "web", 7, "i-2"),
            Err(GrantError::BadMac)
        );
        assert_eq!(
            keys.verify(Some(&s), "db", 7, "i-1"),
            Err(GrantError::BadMac)
        );
        // A changed issue time breaks the MAC too.
        let forged = s.replacen(".1000.", ".1001.", 1);
        assert_eq!(
            keys.verify(Some(&forged), "web", 7, "i-1"),
            Err(GrantError::BadMac)
        );
        for bad in ["", "g1", "g1.x.1.zz", "g2.a.1.00", "g1.a.b.00"] {
            assert!(keys.verify(Some(bad), "web", 7, "i-1").is_err(), "{bad}");
        }
        assert_eq!(keys.verify(None, "web", 7, "i-1"), Err(GrantError::Missing));
        // Another coordinator's key (another data dir): unknown.
        let other = tempfile::tempdir().unwrap();
        let theirs = GrantKeys::load_or_create(other.path()).unwrap().sign(&g(7));
        assert_eq!(
            keys.verify(Some(&theirs), "web", 7, "i-1"),
            Err(GrantError::UnknownKey)
        );
    }

    #[test]
    fn keys_persist_and_rotate_with_overlap() {
        let d = tempfile::tempdir().unwrap();
        let first = GrantKeys::load_or_create(d.path()).unwrap();
        let old = first.sign(&g(1));
        // Read back, the same key signs.
        let again = GrantKeys::load_or_create(d.path()).unwrap();
        assert_eq!(again.signing_id(), first.signing_id());
        let id = GrantKeys::rotate(d.path()).unwrap();
        let rotated = GrantKeys::load_or_create(d.path()).unwrap();
        assert_eq!(rotated.signing_id(), id);
        assert_ne!(id, first.signing_id());
        // A grant of the previous key still verifies.
        assert!(rotated.verify(Some(&old), "web", 1, "i-1").is_ok());
        // Only KEPT keys are kept: after enough rotations the first is gone.
        for _ in 0..KEPT {
            GrantKeys::rotate(d.path()).unwrap();
        }
        let later = GrantKeys::load_or_create(d.path()).unwrap();
        assert_eq!(
            later.verify(Some(&old), "web", 1, "i-1"),
            Err(GrantError::UnknownKey)
        );
        let mode = std::fs::metadata(d.path().join(FILE))
            .unwrap()
            .permissions();
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(mode.mode() & 0o777, 0o600);
    }

    #[test]
    fn a_damaged_key_file_stops_the_start() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join(FILE), "abc not-hex\n").unwrap();
        let err = GrantKeys::load_or_create(d.path()).unwrap_err();
        assert!(format!("{err:#}").contains("128 hex digits"), "{err:#}");
    }
}
