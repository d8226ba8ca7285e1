//! Who may call usage-gate: API keys from the configuration, each with a name (the actor in audit
//! records) and scopes. The configuration's keys are kept as SHA-256 digests and compared in
//! constant time; a presented key found valid is remembered, so it is hashed once.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a key may do. Health, metrics and docs need none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    Check,
    Events,
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 3] = [Scope::Check, Scope::Events, Scope::Admin];

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|scope| scope.as_str() == s)
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::Check => "check",
            Scope::Events => "events",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A set of scopes (a bitset: copied, never allocated, on every request).
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Scopes(u8);

impl Scopes {
    pub fn insert(&mut self, scope: Scope) {
        self.0 |= 1 << scope as u8;
    }

    pub fn contains(self, scope: Scope) -> bool {
        self.0 & (1 << scope as u8) != 0
    }

    pub fn iter(self) -> impl Iterator<Item = Scope> {
        Scope::ALL.into_iter().filter(move |s| self.contains(*s))
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl<const N: usize> From<[Scope; N]> for Scopes {
    fn from(scopes: [Scope; N]) -> Self {
        let mut set = Scopes::default();
        scopes.into_iter().for_each(|s| set.insert(s));
        set
    }
}

impl fmt::Debug for Scopes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

/// The SHA-256 digest of a key: what the configuration may hold instead of the key itself.
pub type KeyDigest = [u8; 32];

pub fn digest(key: &[u8]) -> KeyDigest {
    Sha256::digest(key).into()
}

/// One accepted key. Rotation: list the old and the new key under the same name for a while.
#[derive(Clone)]
pub struct ApiKey {
    pub name: Arc<str>,
    pub digest: KeyDigest,
    pub scopes: Scopes,
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiKey")
            .field("name", &self.name)
            .field("digest", &"[redacted]")
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// The authenticated caller (the routes' middleware puts it in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub name: Arc<str>,
    pub scopes: Scopes,
}

impl Caller {
    pub fn has(&self, scope: Scope) -> bool {
        self.scopes.contains(scope)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ApiKeys {
    keys: Vec<ApiKey>,
    remembered: Remembered,
}

/// Presented keys already found valid, each with its key's place in `keys`, so a key's SHA-256
/// is computed once, not on every request: 3,600 of a warm check's instructions
/// (`bench/check_instructions.py`, where valgrind hides the CPU's SHA extensions). Only a key
/// whose digest matched enters, so it holds at most one entry per configured key however many
/// unknown keys are tried, so no key a caller sends can crowd it: hashed with foldhash under a
/// per-process random seed, not SipHash (~250 instructions a request for a 40-byte key). Shared
/// by the clones of `ApiKeys`.
#[derive(Clone, Default)]
struct Remembered(Arc<RwLock<KeyPlaces>>);

/// A presented key → its key's place in `ApiKeys::keys`.
type KeyPlaces = HashMap<Box<[u8]>, usize, foldhash::quality::RandomState>;

impl fmt::Debug for Remembered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The keys themselves are secrets: only how many.
        write!(f, "Remembered({})", self.0.read().map_or(0, |known| known.len()))
    }
}

impl ApiKeys {
    pub fn new(keys: Vec<ApiKey>) -> Self {
        Self { keys, remembered: Remembered::default() }
    }

    /// Looks a presented key up: one it accepted before at once; another by its digest, every
    /// configured digest compared without an early exit, so the time taken does not tell which
    /// key (or how much of one) matched.
    pub fn authenticate(&self, presented: &[u8]) -> Option<Caller> {
        let remembered = self.remembered.0.read().ok().and_then(|known| known.get(presented).copied());
        let index = match remembered {
            Some(index) => index,
            None => {
                let index = self.by_presented_digest(&digest(presented))?;
                if let Ok(mut known) = self.remembered.0.write() {
                    known.insert(presented.into(), index);
                }
                index
            }
        };
        let key = &self.keys[index];
        Some(Caller { name: key.name.clone(), scopes: key.scopes })
    }

    fn by_presented_digest(&self, presented: &KeyDigest) -> Option<usize> {
        let mut found = None;
        for (index, key) in self.keys.iter().enumerate() {
            if bool::from(key.digest.ct_eq(presented)) {
                found = Some(index);
            }
        }
        found
    }
}

impl ApiKeys {
    /// The caller whose key has this digest (a console session holds the digest of the key
    /// that started it, so a key removed from the configuration ends its sessions).
    pub fn by_digest(&self, digest: &[u8]) -> Option<Caller> {
        let key = self.keys.iter().find(|key| bool::from(key.digest.as_slice().ct_eq(digest)))?;
        Some(Caller { name: key.name.clone(), scopes: key.scopes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(vec![
            ApiKey {
                name: "ops".into(),
                digest: digest(b"ops-key-0123456789"),
                scopes: [Scope::Admin].into(),
            },
            ApiKey {
                name: "ops".into(),
                digest: digest(b"ops-key-rotated-999"),
                scopes: [Scope::Admin].into(),
            },
            ApiKey {
                name: "api".into(),
                digest: digest(b"api-key-0123456789"),
                scopes: [Scope::Check].into(),
            },
        ])
    }

    #[test]
    fn authenticates_by_key_and_names_the_caller() {
        let keys = keys();
        let caller = keys.authenticate(b"api-key-0123456789").unwrap();
        assert_eq!(&*caller.name, "api");
        assert!(caller.has(Scope::Check));
        assert!(!caller.has(Scope::Admin));
        assert!(keys.authenticate(b"api-key-012345678").is_none());
        assert!(keys.authenticate(b"").is_none());
    }

    #[test]
    fn both_keys_of_a_rotation_work_under_one_name() {
        let keys = keys();
        assert_eq!(&*keys.authenticate(b"ops-key-0123456789").unwrap().name, "ops");
        assert_eq!(&*keys.authenticate(b"ops-key-rotated-999").unwrap().name, "ops");
    }

    #[test]
    fn a_key_is_remembered_once_accepted_and_an_unknown_one_never() {
        let keys = keys();
        for _ in 0..3 {
            assert_eq!(&*keys.authenticate(b"api-key-0123456789").unwrap().name, "api");
            assert!(keys.authenticate(b"not-a-key-0123456789").is_none());
        }
        assert_eq!(keys.remembered.0.read().unwrap().len(), 1);
        // A clone (the app's copy) shares what was remembered, and answers the same.
        let copy = keys.clone();
        assert_eq!(copy.authenticate(b"api-key-0123456789"), keys.authenticate(b"api-key-0123456789"));
        assert!(copy.authenticate(b"api-key-012345678").is_none());
        assert_eq!(copy.remembered.0.read().unwrap().len(), 1);
        let shown = format!("{keys:?}");
        assert!(!shown.contains("api-key-0123456789") && shown.contains("Remembered(1)"), "{shown}");
    }

    #[test]
    fn debug_output_hides_the_digest() {
        let shown = format!("{:?}", keys());
        assert!(!shown.contains(&hex::encode(digest(b"ops-key-0123456789"))));
        assert!(shown.contains("[redacted]"));
    }
}
