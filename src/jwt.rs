//! End users' tokens, verified by usage-gate for the gate (`[gate.jwt]`): most proxies cannot
//! verify a JWT themselves (open-source nginx, Caddy, HAProxy), so the proxy forwards the user's
//! `Authorization: Bearer` header and usage-gate takes the customer id from a verified claim.
//!
//! Keys come from a JWKS URL (refreshed every `jwks_refresh_s`, and at once, at most every
//! [`UNKNOWN_KID_REFRESH`], when a token names a key id it does not know: key rotation), a JWKS
//! file, or an HS256 secret. `jsonwebtoken` does the verification; a token is accepted only in
//! one of the configured algorithms and only with a key of that algorithm's family, so an
//! RS256 public key is never used as an HMAC secret.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use secrecy::ExposeSecret;

use crate::config::{JwtKeys, JwtSettings};
use crate::domain::CustomerId;

/// The soonest a token with an unknown key id makes the JWKS be fetched again: a flood of
/// made-up key ids must not become a flood of requests to the identity provider.
pub const UNKNOWN_KID_REFRESH: Duration = Duration::from_secs(10);

/// Why a token was refused (each answered 401 with its own code).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("no bearer token (Authorization: Bearer <JWT>)")]
    Missing,
    #[error("not a well-formed JWT")]
    Malformed,
    #[error("signed with an algorithm that is not accepted")]
    Algorithm,
    #[error("signed with a key usage-gate does not know")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("issued by another issuer")]
    Issuer,
    #[error("addressed to another audience")]
    Audience,
    #[error("claim {0} is missing")]
    MissingClaim(String),
    #[error("claim {0} is missing or not a customer id (UUID)")]
    Customer(String),
}

impl TokenError {
    /// The problem's machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Missing => "token_missing",
            TokenError::Expired => "token_expired",
            _ => "token_invalid",
        }
    }
}

/// Verifies tokens; cheap to share (`Arc`).
pub struct Verifier {
    settings: JwtSettings,
    /// Where the keys come from (`settings`' source).
    source: JwtKeys,
    /// The algorithms tokens may be signed with.
    algorithms: Vec<jsonwebtoken::Algorithm>,
    keys: RwLock<Keys>,
    client: reqwest::Client,
    /// When the JWKS was last fetched because of an unknown key id.
    refreshed_for_unknown: Mutex<Option<Instant>>,
}

/// The keys tokens may be signed with: by key id, and those without one.
#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, DecodingKey>,
    unnamed: Vec<DecodingKey>,
}

impl Keys {
    fn from_set(set: &JwkSet) -> Self {
        let mut keys = Keys::default();
        for jwk in &set.keys {
            let Some(key) = decoding_key(jwk) else { continue };
            match &jwk.common.key_id {
                Some(kid) => {
                    keys.by_kid.insert(kid.clone(), key);
                }
                None => keys.unnamed.push(key),
            }
        }
        keys
    }
}

/// A JWK as a verification key, unless it is one usage-gate must not verify with (a symmetric
/// key in a JWKS, or one it cannot read).
fn decoding_key(jwk: &Jwk) -> Option<DecodingKey> {
    if matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::OctetKey(_)) {
        tracing::warn!(kid = ?jwk.common.key_id, "jwt: a symmetric key in the JWKS is ignored");
        return None;
    }
    DecodingKey::from_jwk(jwk)
        .inspect_err(
            |e| tracing::warn!(kid = ?jwk.common.key_id, error = %e, "jwt: a JWKS key cannot be read"),
        )
        .ok()
}

impl Verifier {
    /// Loads the keys (fetching the JWKS if it comes from a URL) and, for a URL, keeps them
    /// fresh in the background. Fails if no key can be loaded.
    pub async fn start(settings: JwtSettings) -> anyhow::Result<Arc<Self>> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let source = settings.keys().ok_or_else(|| anyhow::anyhow!("gate.jwt: no key source"))?;
        let keys = match &source {
            JwtKeys::Hs(secret) => Keys {
                unnamed: vec![DecodingKey::from_secret(secret.expose_secret().as_bytes())],
                ..Keys::default()
            },
            JwtKeys::JwksFile(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| anyhow::anyhow!("gate.jwt.jwks_file {}: {e}", path.display()))?;
                let set: JwkSet = serde_json::from_str(&text)
                    .map_err(|e| anyhow::anyhow!("gate.jwt.jwks_file {}: not a JWKS: {e}", path.display()))?;
                Keys::from_set(&set)
            }
            JwtKeys::JwksUrl { url, .. } => Keys::from_set(
                &fetch(&client, url).await.map_err(|e| anyhow::anyhow!("gate.jwt.jwks_url: {e}"))?,
            ),
        };
        anyhow::ensure!(!keys.by_kid.is_empty() || !keys.unnamed.is_empty(), "gate.jwt: no usable key");
        let verifier = Arc::new(Self {
            algorithms: settings.accepted(),
            settings,
            source,
            keys: RwLock::new(keys),
            client,
            refreshed_for_unknown: Mutex::new(None),
        });
        if let JwtKeys::JwksUrl { every, .. } = &verifier.source {
            let (weak, every) = (Arc::downgrade(&verifier), *every);
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(every).await;
                    let Some(verifier) = weak.upgrade() else { return };
                    verifier.refresh().await;
                }
            });
        }
        Ok(verifier)
    }

    /// Fetches the JWKS again; on failure the keys stay as they were.
    async fn refresh(&self) {
        let JwtKeys::JwksUrl { url, .. } = &self.source else { return };
        match fetch(&self.client, url).await {
            Ok(set) => *self.keys.write().expect("keys lock") = Keys::from_set(&set),
            Err(e) => tracing::warn!(error = %e, "jwt: cannot refresh the JWKS; keeping the keys it had"),
        }
    }

    /// The customer the token is for, if it verifies.
    pub async fn customer(&self, token: &str) -> Result<CustomerId, TokenError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
        if !self.algorithms.contains(&header.alg) {
            return Err(TokenError::Algorithm);
        }
        let claims = match self.verify(token, header.alg, header.kid.as_deref()) {
            Err(TokenError::UnknownKey) if self.may_refresh_for_unknown() => {
                self.refresh().await;
                self.verify(token, header.alg, header.kid.as_deref())?
            }
            verified => verified?,
        };
        let claim = &self.settings.customer_claim;
        claims
            .get(claim)
            .and_then(|value| value.as_str())
            .and_then(|raw| CustomerId::parse(raw).ok())
            .ok_or_else(|| TokenError::Customer(claim.clone()))
    }

    fn may_refresh_for_unknown(&self) -> bool {
        if !matches!(self.source, JwtKeys::JwksUrl { .. }) {
            return false;
        }
        let mut last = self.refreshed_for_unknown.lock().expect("refresh lock");
        if last.is_some_and(|at| at.elapsed() < UNKNOWN_KID_REFRESH) {
            return false;
        }
        *last = Some(Instant::now());
        true
    }

    fn verify(
        &self,
        token: &str,
        alg: Algorithm,
        kid: Option<&str>,
    ) -> Result<serde_json::Map<String, serde_json::Value>, TokenError> {
        let keys = self.keys.read().expect("keys lock");
        let candidates: Vec<&DecodingKey> = match kid.and_then(|kid| keys.by_kid.get(kid)) {
            Some(key) => vec![key],
            None if kid.is_some() && keys.unnamed.is_empty() => return Err(TokenError::UnknownKey),
            None => keys.unnamed.iter().collect(),
        };
        // Only a key of the token's algorithm family: no HS256 "signed" with an RSA public key.
        let mut candidates = candidates.into_iter().filter(|key| key.family() == alg.family()).peekable();
        if candidates.peek().is_none() {
            return Err(TokenError::UnknownKey);
        }
        let validation = self.validation(alg);
        let mut refused = TokenError::Signature;
        for key in candidates {
            match jsonwebtoken::decode(token, key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    refused = refusal(e.kind());
                    if refused != TokenError::Signature {
                        return Err(refused);
                    }
                }
            }
        }
        Err(refused)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut validation = Validation::new(alg);
        validation.leeway = self.settings.leeway.as_secs();
        validation.set_issuer(&[self.settings.issuer.as_str()]);
        validation.set_audience(&[self.settings.audience.as_str()]);
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.validate_nbf = true;
        validation
    }
}

fn refusal(kind: &ErrorKind) -> TokenError {
    match kind {
        ErrorKind::ExpiredSignature => TokenError::Expired,
        ErrorKind::ImmatureSignature => TokenError::NotYetValid,
        ErrorKind::InvalidIssuer => TokenError::Issuer,
        ErrorKind::InvalidAudience => TokenError::Audience,
        ErrorKind::InvalidAlgorithm | ErrorKind::MissingAlgorithm => TokenError::Algorithm,
        ErrorKind::InvalidSignature => TokenError::Signature,
        ErrorKind::MissingRequiredClaim(claim) => TokenError::MissingClaim(claim.clone()),
        _ => TokenError::Malformed,
    }
}

async fn fetch(client: &reqwest::Client, url: &url::Url) -> Result<JwkSet, String> {
    let response = client.get(url.clone()).send().await.map_err(|e| format!("cannot fetch the JWKS: {e}"))?;
    if !response.status().is_success() {
        return Err(format!("the JWKS answered {}", response.status()));
    }
    response.json::<JwkSet>().await.map_err(|e| format!("not a JWKS: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_names_what_was_wrong() {
        assert_eq!(refusal(&ErrorKind::ExpiredSignature), TokenError::Expired);
        assert_eq!(refusal(&ErrorKind::InvalidAudience), TokenError::Audience);
        assert_eq!(refusal(&ErrorKind::InvalidIssuer), TokenError::Issuer);
        assert_eq!(TokenError::Expired.code(), "token_expired");
        assert_eq!(TokenError::Audience.code(), "token_invalid");
    }
}
