//! The `[gate]` section (with `[gate.jwt]`): as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGate {
    pub customer_header: String,
    pub blocked_status: u16,
    pub jwt: RawJwt,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJwt {
    pub jwks_url: String,
    pub jwks_refresh_s: u64,
    pub jwks_file: String,
    #[serde(serialize_with = "super::redact")]
    pub hs256_secret: SecretString,
    pub algorithms: Vec<String>,
    pub issuer: String,
    pub audience: String,
    pub leeway_s: u64,
    pub customer_claim: String,
}

#[derive(Debug, Clone)]
pub struct GateSettings {
    pub customer_header: HeaderName,
    pub blocked_status: u16,
    /// End users' tokens verified by usage-gate; `None`: the customer id comes from
    /// `customer_header`.
    pub jwt: Option<JwtSettings>,
}

#[derive(Debug, Clone)]
pub struct JwtSettings {
    pub keys: JwtKeys,
    pub algorithms: Vec<jsonwebtoken::Algorithm>,
    pub issuer: String,
    pub audience: String,
    pub leeway: Duration,
    pub customer_claim: String,
}

/// Where the keys that sign end users' tokens come from.
#[derive(Debug, Clone)]
pub enum JwtKeys {
    JwksUrl { url: Url, every: Duration },
    JwksFile(PathBuf),
    Hs(SecretString),
}

pub(super) fn validate(v: &mut Validator, raw: &RawGate) -> GateSettings {
    GateSettings {
        customer_header: v.parse(
            "gate.customer_header",
            &raw.customer_header,
            HeaderName::from_static("x-customer-id"),
            |s| {
                HeaderName::from_bytes(s.as_bytes())
                    .map_err(|_| format!("must be an HTTP header name, got {s:?}"))
            },
        ),
        blocked_status: {
            let status = raw.blocked_status;
            v.check("gate.blocked_status", matches!(status, 402 | 403 | 429), || {
                format!("must be 402, 403 or 429, got {status}")
            });
            status
        },
        jwt: validate_jwt(v, &raw.jwt),
    }
}

fn validate_jwt(v: &mut Validator, raw: &RawJwt) -> Option<JwtSettings> {
    use jsonwebtoken::Algorithm;
    let secret = raw.hs256_secret.expose_secret();
    let sources = [!raw.jwks_url.is_empty(), !raw.jwks_file.is_empty(), !secret.is_empty()];
    match sources.iter().filter(|set| **set).count() {
        0 => return None,
        1 => {}
        _ => v.problem("gate.jwt", "set one of jwks_url, jwks_file and hs256_secret, not several"),
    }
    let keys = if !raw.jwks_url.is_empty() {
        let url =
            v.parse("gate.jwt.jwks_url", &raw.jwks_url, Url::parse("https://invalid").expect("a URL"), |s| {
                Url::parse(s)
                    .ok()
                    .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                    .ok_or_else(|| format!("must be an http(s) URL, got {s:?}"))
            });
        let every = Duration::from_secs(v.range("gate.jwt.jwks_refresh_s", raw.jwks_refresh_s, 10, 86_400));
        JwtKeys::JwksUrl { url, every }
    } else if !raw.jwks_file.is_empty() {
        JwtKeys::JwksFile(PathBuf::from(&raw.jwks_file))
    } else {
        v.check("gate.jwt.hs256_secret", secret.len() >= 32, || "must be at least 32 characters".into());
        JwtKeys::Hs(raw.hs256_secret.clone())
    };
    let symmetric = matches!(keys, JwtKeys::Hs(_));
    let names: Vec<String> = match (raw.algorithms.is_empty(), symmetric) {
        (false, _) => raw.algorithms.clone(),
        (true, false) => vec!["RS256".into(), "ES256".into()],
        (true, true) => vec!["HS256".into()],
    };
    let mut algorithms = Vec::new();
    for name in &names {
        match name.parse::<Algorithm>() {
            Ok(alg) if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) != symmetric => {
                v.problem(
                    "gate.jwt.algorithms",
                    if symmetric {
                        format!("{name} needs a public key: with hs256_secret only HS256, HS384 or HS512")
                    } else {
                        format!("{name} is an HMAC algorithm: with a JWKS only RS*, PS*, ES* or EdDSA")
                    },
                )
            }
            Ok(alg) => algorithms.push(alg),
            Err(_) => v.problem(
                "gate.jwt.algorithms",
                format!("{name:?} is not a JWS algorithm (e.g. RS256, ES256)"),
            ),
        }
    }
    v.check("gate.jwt.issuer", !raw.issuer.is_empty(), || {
        "required with a key source: the tokens' iss".into()
    });
    v.check("gate.jwt.audience", !raw.audience.is_empty(), || {
        "required with a key source: the tokens' aud".into()
    });
    v.check("gate.jwt.customer_claim", !raw.customer_claim.is_empty(), || "must name a claim".into());
    Some(JwtSettings {
        keys,
        algorithms,
        issuer: raw.issuer.clone(),
        audience: raw.audience.clone(),
        leeway: Duration::from_secs(v.range("gate.jwt.leeway_s", raw.leeway_s, 0, 3600)),
        customer_claim: raw.customer_claim.clone(),
    })
}
