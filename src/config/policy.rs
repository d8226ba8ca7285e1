//! The `[policy]` section: as written, typed, and the `validate` between them.

use super::*;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub mode: String,
    pub fail_mode: String,
    pub unknown_customer: String,
    pub near_limit_ratio: f64,
}

pub(super) fn validate(v: &mut Validator, raw: &RawPolicy) -> PolicySettings {
    let ratio = raw.near_limit_ratio;
    v.check("policy.near_limit_ratio", ratio.is_finite() && ratio > 0.0 && ratio <= 1.0, || {
        format!("must be greater than 0 and at most 1, got {ratio}")
    });
    PolicySettings {
        mode: v.parse("policy.mode", &raw.mode, Mode::Enforce, |s| match s {
            "enforce" => Ok(Mode::Enforce),
            "shadow" => Ok(Mode::Shadow),
            _ => Err(format!("must be enforce or shadow, got {s:?}")),
        }),
        fail_mode: v.parse("policy.fail_mode", &raw.fail_mode, FailMode::Open, |s| match s {
            "open" => Ok(FailMode::Open),
            "closed" => Ok(FailMode::Closed),
            _ => Err(format!("must be open or closed, got {s:?}")),
        }),
        unknown_customer: v.parse(
            "policy.unknown_customer",
            &raw.unknown_customer,
            UnknownCustomer::Deny,
            |s| match s {
                "deny" => Ok(UnknownCustomer::Deny),
                "allow" => Ok(UnknownCustomer::Allow),
                _ => Err(format!("must be deny or allow, got {s:?}")),
            },
        ),
        near_limit_ratio: ratio,
    }
}
