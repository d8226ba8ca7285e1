//! The `[policy]` section's `validate` (the section is `crate::policy::PolicySettings`, the
//! decisions' own input, with how its words are written).

use super::*;

pub(super) fn validate(settings: &PolicySettings, v: &mut Validator) {
    v.parsed("policy.mode", &settings.mode);
    v.parsed("policy.fail_mode", &settings.fail_mode);
    v.parsed("policy.unknown_customer", &settings.unknown_customer);
    let ratio = settings.near_limit_ratio;
    v.check("policy.near_limit_ratio", ratio.is_finite() && ratio > 0.0 && ratio <= 1.0, || {
        format!("must be greater than 0 and at most 1, got {ratio}")
    });
}
