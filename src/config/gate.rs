//! The `[gate]` section (with `[gate.jwt]`) and its `validate`.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSettings {
    pub customer_header: Parsed<HeaderName>,
    pub blocked_status: u16,
    /// End users' tokens verified by usage-gate (when it names a key source); otherwise the
    /// customer id comes from `customer_header`.
    pub jwt: JwtSettings,
}

embedded_default!(GateSettings, "gate");

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSettings {
    pub jwks_url: String,
    #[serde(rename = "jwks_refresh_s", with = "secs")]
    pub jwks_refresh: Duration,
    pub jwks_file: String,
    #[serde(serialize_with = "super::redact")]
    pub hs256_secret: SecretString,
    /// As written; empty: RS256 and ES256 with a JWKS, HS256 with a secret ([`Self::accepted`]).
    pub algorithms: Vec<String>,
    pub issuer: String,
    pub audience: String,
    #[serde(rename = "leeway_s", with = "secs")]
    pub leeway: Duration,
    pub customer_claim: String,
}

embedded_default!(JwtSettings, "gate.jwt");

/// Where the keys that sign end users' tokens come from.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    JwksUrl { url: Url, every: Duration },
    JwksFile(PathBuf),
    Hs(SecretString),
}

impl FromText for HeaderName {
    fn from_text(s: &str) -> Result<Self, String> {
        HeaderName::from_bytes(s.as_bytes()).map_err(|_| format!("must be an HTTP header name, got {s:?}"))
    }
    fn stand_in() -> Self {
        HeaderName::from_static("x-customer-id")
    }
    fn to_text(&self) -> String {
        self.to_string()
    }
}

impl JwtSettings {
    /// Where the keys come from; None (no source named): usage-gate verifies no tokens.
    pub fn keys(&self) -> Option<JwtKeys> {
        let secret = self.hs256_secret.expose_secret();
        if !self.jwks_url.is_empty() {
            Some(JwtKeys::JwksUrl { url: Url::parse(&self.jwks_url).ok()?, every: self.jwks_refresh })
        } else if !self.jwks_file.is_empty() {
            Some(JwtKeys::JwksFile(PathBuf::from(&self.jwks_file)))
        } else if !secret.is_empty() {
            Some(JwtKeys::Hs(self.hs256_secret.clone()))
        } else {
            None
        }
    }

    fn symmetric(&self) -> bool {
        matches!(self.keys(), Some(JwtKeys::Hs(_)))
    }

    /// The algorithms a token may be signed with: as written, or the defaults for the source.
    pub fn accepted(&self) -> Vec<jsonwebtoken::Algorithm> {
        self.algorithm_names().iter().filter_map(|name| name.parse().ok()).collect()
    }

    fn algorithm_names(&self) -> Vec<String> {
        match (self.algorithms.is_empty(), self.symmetric()) {
            (false, _) => self.algorithms.clone(),
            (true, false) => vec!["RS256".into(), "ES256".into()],
            (true, true) => vec!["HS256".into()],
        }
    }

    fn validate(&self, v: &mut Validator) {
        use jsonwebtoken::Algorithm;
        let secret = self.hs256_secret.expose_secret();
        let sources = [!self.jwks_url.is_empty(), !self.jwks_file.is_empty(), !secret.is_empty()];
        match sources.iter().filter(|set| **set).count() {
            0 => return,
            1 => {}
            _ => v.problem("gate.jwt", "set one of jwks_url, jwks_file and hs256_secret, not several"),
        }
        if !self.jwks_url.is_empty() {
            let url = Url::parse(&self.jwks_url)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            v.check("gate.jwt.jwks_url", url.is_some(), || {
                format!("must be an http(s) URL, got {:?}", self.jwks_url)
            });
            v.range("gate.jwt.jwks_refresh_s", self.jwks_refresh.as_secs(), 10, 86_400);
        } else if self.jwks_file.is_empty() {
            v.check("gate.jwt.hs256_secret", secret.len() >= 32, || "must be at least 32 characters".into());
        }
        let symmetric = self.symmetric();
        for name in &self.algorithm_names() {
            match name.parse::<Algorithm>() {
                Ok(alg)
                    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) != symmetric =>
                {
                    v.problem(
                        "gate.jwt.algorithms",
                        if symmetric {
                            format!("{name} needs a public key: with hs256_secret only HS256, HS384 or HS512")
                        } else {
                            format!("{name} is an HMAC algorithm: with a JWKS only RS*, PS*, ES* or EdDSA")
                        },
                    )
                }
                Ok(_) => {}
                Err(_) => v.problem(
                    "gate.jwt.algorithms",
                    format!("{name:?} is not a JWS algorithm (e.g. RS256, ES256)"),
                ),
            }
        }
        v.check("gate.jwt.issuer", !self.issuer.is_empty(), || {
            "required with a key source: the tokens' iss".into()
        });
        v.check("gate.jwt.audience", !self.audience.is_empty(), || {
            "required with a key source: the tokens' aud".into()
        });
        v.check("gate.jwt.customer_claim", !self.customer_claim.is_empty(), || "must name a claim".into());
        v.range("gate.jwt.leeway_s", self.leeway.as_secs(), 0, 3600);
    }
}

impl GateSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        v.parsed("gate.customer_header", &self.customer_header);
        let status = self.blocked_status;
        v.check("gate.blocked_status", matches!(status, 402 | 403 | 429), || {
            format!("must be 402, 403 or 429, got {status}")
        });
        self.jwt.validate(v);
    }
}
