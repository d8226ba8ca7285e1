//! The `[billabear]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBillaBear {
    pub base_url: String,
    #[serde(serialize_with = "super::redact")]
    pub api_key: SecretString,
    pub timeout_ms: u64,
    pub admin_timeout_ms: u64,
    pub connect_timeout_ms: u64,
}

#[derive(Debug, Clone)]
pub struct BillaBearSettings {
    pub base_url: Url,
    pub api_key: SecretString,
    /// For calls a check waits on.
    pub timeout: Duration,
    /// For operators' changes (usage limits), which may wait longer than a check.
    pub admin_timeout: Duration,
    pub connect_timeout: Duration,
}

fn parse_base_url(s: &str) -> Result<Url, String> {
    let url =
        Url::parse(s).map_err(|e| format!("must be an http(s) URL such as https://HOST/api/v1 ({e})"))?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.cannot_be_a_base() {
        return Err(format!("must be an http(s) URL such as https://HOST/api/v1, got {s:?}"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("must not have a query or fragment".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("must not carry credentials; set billabear.api_key".into());
    }
    Ok(url)
}

pub(super) fn validate(v: &mut Validator, raw: &RawBillaBear) -> BillaBearSettings {
    BillaBearSettings {
        base_url: v.parse(
            "billabear.base_url",
            &raw.base_url,
            Url::parse("http://invalid").expect("static URL"),
            parse_base_url,
        ),
        api_key: {
            v.check("billabear.api_key", !raw.api_key.expose_secret().is_empty(), || {
                "must be set: the BillaBear API key, sent as X-API-Key".into()
            });
            raw.api_key.clone()
        },
        timeout: Duration::from_millis(v.range("billabear.timeout_ms", raw.timeout_ms, 1, 60_000)),
        admin_timeout: Duration::from_millis(v.range(
            "billabear.admin_timeout_ms",
            raw.admin_timeout_ms,
            1,
            120_000,
        )),
        connect_timeout: Duration::from_millis(v.range(
            "billabear.connect_timeout_ms",
            raw.connect_timeout_ms,
            1,
            60_000,
        )),
    }
}
