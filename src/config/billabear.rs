//! The `[billabear]` section and its `validate`.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BillaBearSettings {
    pub base_url: Parsed<BaseUrl>,
    #[serde(serialize_with = "super::redact")]
    pub api_key: SecretString,
    /// For calls a check waits on.
    #[serde(rename = "timeout_ms", with = "ms")]
    pub timeout: Duration,
    /// For operators' changes (usage limits), which may wait longer than a check.
    #[serde(rename = "admin_timeout_ms", with = "ms")]
    pub admin_timeout: Duration,
    #[serde(rename = "connect_timeout_ms", with = "ms")]
    pub connect_timeout: Duration,
}

embedded_default!(BillaBearSettings, "billabear");

/// BillaBear's API root: an http(s) URL with a path to add routes to, and nothing else.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseUrl(pub Url);

impl Deref for BaseUrl {
    type Target = Url;
    fn deref(&self) -> &Url {
        &self.0
    }
}

impl FromText for BaseUrl {
    fn from_text(s: &str) -> Result<Self, String> {
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
        Ok(BaseUrl(url))
    }
    fn stand_in() -> Self {
        BaseUrl(Url::parse("http://invalid").expect("static URL"))
    }
    fn to_text(&self) -> String {
        self.0.to_string()
    }
}

impl BillaBearSettings {
    pub(super) fn validate(&self, v: &mut Validator) {
        v.parsed("billabear.base_url", &self.base_url);
        v.check("billabear.api_key", !self.api_key.expose_secret().is_empty(), || {
            "must be set: the BillaBear API key, sent as X-API-Key".into()
        });
        v.range_ms("billabear.timeout_ms", self.timeout, 1, 60_000);
        v.range_ms("billabear.admin_timeout_ms", self.admin_timeout, 1, 120_000);
        v.range_ms("billabear.connect_timeout_ms", self.connect_timeout, 1, 60_000);
    }
}
