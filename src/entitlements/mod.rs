//! The plan's side of a customer, as BillaBear keeps it and enforces none of it: the features
//! its active subscriptions include, the feature limits they carry (an integer per feature
//! code, summed by BillaBear) and the user count, what a check asks of them, and the settings
//! that read them. Pure: no I/O; the cache keeps a [`Plan`] in each snapshot; `judgement`
//! judges asks and writes against it.
//!
//! A feature limit whose count the caller does not give (`in_use`) is counted by usage-gate:
//! the `value` of the events it accepts whose code is the feature's (or the metric
//! `entitlements.metrics` names for it), within the feature's [`Window`] (`feature_counts`
//! keeps the counts).

pub mod window;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::domain::{Interner, Parsed, PlanId};
pub use window::{Bounds, Period, TimeZone, Window};

/// Whether `code` can be a feature code: 1 to 128 visible ASCII characters (the check's
/// `feature` and the settings' codes alike).
pub fn is_feature_code(code: &str) -> bool {
    (1..=128).contains(&code.len()) && code.bytes().all(|b| b.is_ascii_graphic())
}

/// A feature code of some plan, interned ([`Interner`]): only codes BillaBear listed are
/// interned; a caller's code that no plan has is looked up, not added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FeatureCode(u32);

/// A separate table from metric codes' (`projection::Code`): a feature is not a priced metric.
static CODES: Interner = Interner::new();

impl FeatureCode {
    /// The code of a feature BillaBear listed.
    pub fn intern(code: &str) -> FeatureCode {
        FeatureCode(CODES.intern_telling(code).0)
    }

    /// The code, if some plan listed it.
    pub fn known(code: &str) -> Option<FeatureCode> {
        CODES.known(code).map(FeatureCode)
    }

    pub fn as_str(self) -> &'static str {
        CODES.name(self.0)
    }

    /// How many codes are interned: grows when a plan names a feature no plan named before.
    pub fn interned() -> usize {
        CODES.len()
    }
}

/// A feature the plan includes, with its limit if it carries one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlanFeature {
    pub code: FeatureCode,
    /// `NO_LIMIT` for a feature without a count: 16 bytes an entry, not 24 with an `Option`.
    limit: u64,
}

const NO_LIMIT: u64 = u64::MAX;

impl PlanFeature {
    /// How many the plan allows (none: the feature is included without a count).
    pub fn limit(&self) -> Option<u64> {
        (self.limit != NO_LIMIT).then_some(self.limit)
    }
}

/// What a customer's plan includes: its features, each with its limit if it has one, and the
/// user count (0: the plan sets none, or the customer is disabled). Customers on the same plan
/// share one copy ([`Plan::new`]), so a snapshot holds a pointer: 8 bytes, where its own copy
/// of 3 features and 2 limits cost ~100 (`cache-memory --plan`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan(Option<Arc<PlanData>>);

#[derive(Debug, PartialEq, Eq, Hash)]
struct PlanData {
    features: Box<[PlanFeature]>,
    user_count: u64,
    /// The BillaBear plans of the customer's active subscriptions (usage-gate's plan rules).
    plans: Box<[PlanId]>,
}

/// Distinct plans shared at most: beyond, a plan is not shared (each snapshot has its own
/// copy), so customers whose sums of subscriptions are all different cannot grow the table
/// without bound. Plans are few in practice (BillaBear's plans times their combinations).
const SHARED_PLANS: usize = 10_000;

static PLANS: LazyLock<Mutex<HashSet<Arc<PlanData>>>> = LazyLock::new(Default::default);

impl Plan {
    /// From BillaBear's lists: `limits` (code, limit) and `features` (codes), either naming a
    /// feature as included; a feature listed in both keeps its limit, one limited twice keeps
    /// the higher (BillaBear sums each code over the subscriptions, so it does not happen). A
    /// negative limit or count is read as 0.
    pub fn new<'a>(
        limits: impl IntoIterator<Item = (&'a str, i64)>,
        features: impl IntoIterator<Item = &'a str>,
        user_count: i64,
        plans: impl IntoIterator<Item = PlanId>,
    ) -> Plan {
        let mut listed: Vec<PlanFeature> = Vec::new();
        let mut add = |code: &str, limit: u64| {
            let code = FeatureCode::intern(code);
            match listed.iter_mut().find(|f| f.code == code) {
                Some(f) if f.limit == NO_LIMIT || limit == NO_LIMIT => f.limit = f.limit.min(limit),
                Some(f) => f.limit = f.limit.max(limit),
                None => listed.push(PlanFeature { code, limit }),
            }
        };
        for (code, limit) in limits {
            add(code, limit.max(0) as u64);
        }
        for code in features {
            add(code, NO_LIMIT);
        }
        // One order for one plan, whatever order BillaBear listed it in, so equal plans are shared.
        listed.sort_unstable_by_key(|f| f.code.0);
        let user_count = user_count.max(0) as u64;
        let mut plans: Vec<PlanId> = plans.into_iter().collect();
        plans.sort_unstable();
        plans.dedup();
        if listed.is_empty() && user_count == 0 && plans.is_empty() {
            return Plan(None);
        }
        let data =
            PlanData { features: listed.into_boxed_slice(), user_count, plans: plans.into_boxed_slice() };
        let mut shared = PLANS.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = shared.get(&data) {
            return Plan(Some(known.clone()));
        }
        let data = Arc::new(data);
        if shared.len() < SHARED_PLANS {
            shared.insert(data.clone());
        }
        Plan(Some(data))
    }

    pub fn features(&self) -> &[PlanFeature] {
        self.0.as_ref().map_or(&[], |data| &data.features)
    }

    pub fn user_count(&self) -> u64 {
        self.0.as_ref().map_or(0, |data| data.user_count)
    }

    /// The BillaBear plans the customer's active subscriptions are on.
    pub fn plans(&self) -> &[PlanId] {
        self.0.as_ref().map_or(&[], |data| &data.plans)
    }

    /// The feature, if the plan includes it.
    pub fn feature(&self, code: &str) -> Option<&PlanFeature> {
        let code = FeatureCode::known(code)?;
        self.features().iter().find(|f| f.code == code)
    }
}

/// What a check asks besides money: of the plan, and for whom inside the customer.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanAsk {
    pub feature: Option<FeatureAsk>,
    /// Seats the caller wants to have: allowed iff within the plan's user count.
    pub seats: Option<u64>,
    /// Who inside the customer asks (a user, a workspace): judged by per-subject rules.
    pub subject: Option<crate::domain::Subject>,
}

impl PlanAsk {
    pub fn is_empty(&self) -> bool {
        self.feature.is_none() && self.seats.is_none() && self.subject.is_none()
    }
}

/// `?feature=CODE[&in_use=K][&quantity=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeatureAsk {
    pub code: String,
    /// How many more the caller is about to use (at least 1).
    pub quantity: u64,
    /// How many the caller counts in use now, for a feature whose count lives with the caller
    /// (projects, members): allowed iff `in_use + quantity` is within the limit.
    pub in_use: Option<u64>,
}

/// What a plan of 0 users means for an active customer (`entitlements.zero_user_count`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZeroUserCount {
    /// The plan sets no user count: any number of seats.
    Unlimited,
    /// No seats at all.
    None,
}

crate::written_as!(ZeroUserCount { "unlimited" => Unlimited, "none" => None });

/// The `[entitlements]` section (checked by `config::entitlements`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntitlementSettings {
    pub zero_user_count: Parsed<ZeroUserCount>,
    /// Calendar windows' time zone.
    pub time_zone: Parsed<TimeZone>,
    /// A feature's window by its code; the billing period for the others.
    #[serde(default)]
    pub windows: BTreeMap<String, Parsed<Window>>,
    /// The metric whose events count towards a feature, by the feature's code; the feature's
    /// own code for the others.
    #[serde(default)]
    pub metrics: BTreeMap<String, String>,
}

/// The same as `config/default.toml`'s (a config test holds them together).
impl Default for EntitlementSettings {
    fn default() -> Self {
        Self {
            zero_user_count: ZeroUserCount::Unlimited.into(),
            time_zone: TimeZone(chrono_tz::Tz::UTC).into(),
            windows: BTreeMap::new(),
            metrics: BTreeMap::new(),
        }
    }
}

impl EntitlementSettings {
    /// The feature code an event with `code` counts towards: its own, or the feature `metrics`
    /// names it for; none when `metrics` gives that feature another metric. Every event is
    /// counted so, whether or not a plan this replica has seen limits the feature: a plan may
    /// come to limit it, and a replica that never fetched the customer must count it too.
    pub fn counted_code<'a>(&'a self, code: &'a str) -> Option<&'a str> {
        if !self.metrics.is_empty() {
            if let Some((feature, _)) = self.metrics.iter().find(|(_, metric)| *metric == code) {
                return Some(feature);
            }
            if self.metrics.contains_key(code) {
                return None;
            }
        }
        Some(code)
    }

    /// [`EntitlementSettings::counted_code`] for a feature some plan listed.
    pub fn counted_as(&self, code: &str) -> Option<FeatureCode> {
        self.counted_code(code).and_then(FeatureCode::known)
    }

    /// The window a feature is counted over.
    pub fn window_of(&self, code: &str) -> Window {
        self.windows.get(code).map_or(Window::BillingPeriod, |w| **w)
    }

    /// The window `feature` is counted over. Without `windows`, the billing period without
    /// reading the code's name, which takes the interner's lock (a counted check's path).
    pub fn window(&self, feature: FeatureCode) -> Window {
        if self.windows.is_empty() {
            return Window::BillingPeriod;
        }
        self.window_of(feature.as_str())
    }

    /// The window `feature` is counted over and its bounds at `now`, a billing period placed by
    /// `period`.
    pub fn placed(
        &self,
        feature: FeatureCode,
        now: chrono::DateTime<chrono::Utc>,
        period: Option<Period>,
    ) -> (Window, Bounds) {
        let window = self.window(feature);
        (window, window.bounds(now, self.zone(), period))
    }

    pub fn zone(&self) -> chrono_tz::Tz {
        self.time_zone.0
    }
}

/// What usage-gate counted of a feature in its current window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Counted {
    /// The events' values summed, with open holds' (`feature_counts`).
    pub used: f64,
    pub window: Window,
    pub bounds: Bounds,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::new([("projects", 25), ("api_calls", 10_000)], ["sso", "projects"], 10, [])
    }

    #[test]
    fn a_feature_is_included_when_listed_or_limited_and_codes_are_shared() {
        let plan = plan();
        assert_eq!(plan.features().len(), 3, "projects is listed twice: one entry");
        assert_eq!(plan.feature("projects").and_then(PlanFeature::limit), Some(25), "the limit stays");
        assert_eq!(plan.feature("sso").map(PlanFeature::limit), Some(None));
        assert!(plan.feature("audit_log").is_none());
        let projects = FeatureCode::known("projects").unwrap();
        assert_eq!(Plan::new([("projects", 5)], [], 0, []).features()[0].code, projects);
        assert_eq!(projects.as_str(), "projects");
        let again = Plan::new([("api_calls", 10_000), ("projects", 25)], ["projects", "sso"], 10, []);
        assert!(
            Arc::ptr_eq(again.0.as_ref().unwrap(), plan.0.as_ref().unwrap()),
            "customers on one plan share its copy, whatever order it was listed in"
        );
        assert_eq!(Plan::new([], [], 0, []), Plan::default());
        assert!(FeatureCode::known("never-listed-by-any-plan").is_none(), "asking does not intern");
    }

    #[test]
    fn events_count_towards_their_feature_or_the_one_a_metric_is_named_for() {
        Plan::new([("counted_calls", 10)], [], 0, []);
        let mut settings = EntitlementSettings::default();
        assert_eq!(settings.counted_as("counted_calls").map(FeatureCode::as_str), Some("counted_calls"));
        assert_eq!(settings.counted_as("a-code-no-plan-has"), None);
        assert_eq!(
            settings.counted_code("a-code-no-plan-has"),
            Some("a-code-no-plan-has"),
            "counted all the same"
        );
        settings.metrics.insert("counted_calls".into(), "api_requests".into());
        assert_eq!(settings.counted_as("api_requests").map(FeatureCode::as_str), Some("counted_calls"));
        assert_eq!(settings.counted_as("counted_calls"), None, "the metric named replaces the code");
        assert_eq!(settings.counted_code("counted_calls"), None);
        assert_eq!(settings.window(FeatureCode::intern("counted_calls")), Window::BillingPeriod);
        settings.windows.insert("counted_calls".into(), Window::Hour.into());
        assert_eq!(settings.window(FeatureCode::intern("counted_calls")), Window::Hour);
    }

    #[test]
    fn negative_figures_from_billabear_read_as_zero() {
        let plan = Plan::new([("projects", -3)], [], -1, []);
        assert_eq!(plan.feature("projects").and_then(PlanFeature::limit), Some(0));
        assert_eq!(plan.user_count(), 0);
    }
}
