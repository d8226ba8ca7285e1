//! The `[entitlements]` section's `validate` (the section is
//! `crate::entitlements::EntitlementSettings`, the plan judgement's own input).

use super::*;

pub(super) fn validate(settings: &EntitlementSettings, v: &mut Validator) {
    v.parsed("entitlements.zero_user_count", &settings.zero_user_count);
}
