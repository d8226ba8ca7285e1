//! The `[entitlements]` section's `validate` (the section is
//! `crate::entitlements::EntitlementSettings`, the plan judgement's own input).

use std::collections::HashMap;

use super::*;
use crate::entitlements::is_feature_code;

pub(super) fn validate(settings: &EntitlementSettings, v: &mut Validator) {
    v.parsed("entitlements.zero_user_count", &settings.zero_user_count);
    v.parsed("entitlements.time_zone", &settings.time_zone);
    for (code, window) in &settings.windows {
        let key = format!("entitlements.windows.{code}");
        v.check(&key, is_feature_code(code), || "a feature code is 1 to 128 visible ASCII characters".into());
        v.parsed(&key, window);
    }
    let mut named: HashMap<&str, &str> = HashMap::new();
    for (feature, metric) in &settings.metrics {
        let key = format!("entitlements.metrics.{feature}");
        v.check(&key, is_feature_code(feature) && is_feature_code(metric), || {
            format!("feature and metric codes are 1 to 128 visible ASCII characters, got {metric:?}")
        });
        if let Some(other) = named.insert(metric, feature) {
            v.problem(
                &key,
                format!("the metric {metric:?} is named for {other:?} too: one feature per metric"),
            );
        }
    }
}
