//! Secrets at rest: values usage-gate must read back (webhook signing secrets) are stored
//! encrypted when `[secrets] key` is set, so a database backup or a read-only leak cannot sign
//! webhooks that receivers trust.
//!
//! AES-256-GCM from aws-lc-rs (already the TLS provider), a random 96-bit nonce per value, and
//! the row's id as associated data (a value copied into another row does not open). A stored
//! value is `enc:v1:<key id>:<base64 of nonce, ciphertext and tag>`; the key id (the first 8
//! hex digits of the key's SHA-256) says which key sealed it, so that after a rotation rows
//! under the previous key are found and sealed again.

use std::fmt;

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha2::{Digest, Sha256};
use uuid::Uuid;

const PREFIX: &str = "enc:v1:";

/// One key and its id.
struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    fn new(bytes: &[u8; 32]) -> Self {
        let id = hex::encode(&Sha256::digest(bytes)[..4]);
        let key = LessSafeKey::new(UnboundKey::new(&AES_256_GCM, bytes).expect("a 32-byte AES-256 key"));
        Self { id, key }
    }
}

/// Parses a key as configured: the base64 of 32 random bytes.
pub fn parse_key(text: &str) -> Result<[u8; 32], String> {
    let bytes = STANDARD
        .decode(text.trim())
        .map_err(|_| "must be base64 (e.g. the output of `openssl rand -base64 32`)".to_owned())?;
    <[u8; 32]>::try_from(bytes.as_slice())
        .map_err(|_| format!("must be the base64 of 32 bytes, got {} bytes", bytes.len()))
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    #[error("sealed under key {0}, which is neither secrets.key nor secrets.previous_key")]
    UnknownKey(String),
    #[error("sealed, but secrets.key is not set")]
    NoKey,
    #[error("does not open with its key (altered, or sealed for another row)")]
    Corrupt,
}

/// Seals and opens values with the configured keys; without a key, values pass as they are.
#[derive(Default)]
pub struct Sealer {
    current: Option<Key>,
    previous: Option<Key>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sealer")
            .field("current", &self.current.as_ref().map(|k| &k.id))
            .field("previous", &self.previous.as_ref().map(|k| &k.id))
            .finish()
    }
}

impl Sealer {
    pub fn new(current: Option<&[u8; 32]>, previous: Option<&[u8; 32]>) -> Self {
        Self { current: current.map(Key::new), previous: previous.map(Key::new) }
    }

    /// Whether values are sealed (a key is set).
    pub fn sealing(&self) -> bool {
        self.current.is_some()
    }

    /// The value as it is to be stored in the row `row`.
    pub fn seal(&self, row: Uuid, plain: &str) -> String {
        let Some(key) = &self.current else { return plain.to_owned() };
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random numbers");
        let mut sealed = plain.as_bytes().to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(row.as_bytes()),
                &mut sealed,
            )
            .expect("AES-GCM seals any value under 64 GiB");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{PREFIX}{}:{}", key.id, STANDARD.encode(out))
    }

    /// The value stored in the row `row`, opened (a value stored plain is returned as it is).
    pub fn open(&self, row: Uuid, stored: &str) -> Result<String, SealError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else { return Ok(stored.to_owned()) };
        let (id, data) = rest.split_once(':').ok_or(SealError::Corrupt)?;
        let key =
            [&self.current, &self.previous].into_iter().flatten().find(|k| k.id == id).ok_or_else(|| {
                if self.current.is_none() { SealError::NoKey } else { SealError::UnknownKey(id.to_owned()) }
            })?;
        let bytes = STANDARD.decode(data).map_err(|_| SealError::Corrupt)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, sealed) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Corrupt)?;
        let mut sealed = sealed.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(row.as_bytes()), &mut sealed)
            .map_err(|_| SealError::Corrupt)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SealError::Corrupt)
    }

    /// Whether a stored value should be sealed again: stored plain while a key is set, or
    /// sealed under another key than the current one.
    pub fn stale(&self, stored: &str) -> bool {
        match (&self.current, stored.strip_prefix(PREFIX)) {
            (Some(_), None) => true,
            (Some(key), Some(rest)) => rest.split_once(':').is_none_or(|(id, _)| id != key.id),
            (None, _) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: [u8; 32] = [7; 32];
    const B: [u8; 32] = [9; 32];

    #[test]
    fn a_sealed_value_opens_for_its_row_only_and_hides_the_plain_value() {
        let sealer = Sealer::new(Some(&A), None);
        let row = Uuid::new_v4();
        let sealed = sealer.seal(row, "whsec_c2VjcmV0");
        assert!(
            sealed.starts_with("enc:v1:") && !sealed.contains("whsec_") && !sealed.contains("c2VjcmV0"),
            "{sealed}"
        );
        assert_ne!(sealed, sealer.seal(row, "whsec_c2VjcmV0"), "a fresh nonce each time");
        assert_eq!(sealer.open(row, &sealed).unwrap(), "whsec_c2VjcmV0");
        assert_eq!(sealer.open(Uuid::new_v4(), &sealed), Err(SealError::Corrupt), "bound to its row");
        let mut altered = sealed.clone();
        altered.replace_range(sealed.len() - 4.., "AAA=");
        assert_eq!(sealer.open(row, &altered), Err(SealError::Corrupt));
        assert_eq!(sealer.open(row, "whsec_plain").unwrap(), "whsec_plain", "plain rows read as they are");
    }

    #[test]
    fn after_a_rotation_old_values_open_with_the_previous_key_and_are_stale() {
        let row = Uuid::new_v4();
        let old = Sealer::new(Some(&A), None).seal(row, "whsec_x");
        let rotated = Sealer::new(Some(&B), Some(&A));
        assert_eq!(rotated.open(row, &old).unwrap(), "whsec_x");
        assert!(rotated.stale(&old) && rotated.stale("whsec_plain"));
        assert!(!rotated.stale(&rotated.seal(row, "whsec_x")));
        let Err(SealError::UnknownKey(_)) = Sealer::new(Some(&B), None).open(row, &old) else { panic!() };
        assert_eq!(Sealer::default().open(row, &old), Err(SealError::NoKey));
        assert!(!Sealer::default().stale("whsec_plain"));
        assert_eq!(Sealer::default().seal(row, "whsec_x"), "whsec_x");
    }

    #[test]
    fn keys_are_the_base64_of_32_bytes() {
        assert_eq!(parse_key(&STANDARD.encode(A)).unwrap(), A);
        assert!(parse_key("not base64!").unwrap_err().contains("base64"));
        assert!(parse_key(&STANDARD.encode([1u8; 16])).unwrap_err().contains("got 16 bytes"));
        assert!(!format!("{:?}", Sealer::new(Some(&A), None)).contains("7, 7"));
    }
}
