//! The plan's side of a customer, as BillaBear keeps it and enforces none of it: the features
//! its active subscriptions include, the feature limits they carry (an integer per feature
//! code, summed by BillaBear) and the user count; and the judgement of a check's ask against
//! it: is the feature in the plan, is there room for `quantity` more beside what the caller has
//! in use, do `seats` fit. Pure: no I/O; the cache keeps a [`Plan`] in each snapshot.
//!
//! A feature limit whose count the caller does not give (`in_use`) is counted by usage-gate:
//! the `value` of the events it accepts whose code is the feature's (or the metric
//! `entitlements.metrics` names for it), within the feature's [`Window`] (`feature_counts`
//! keeps the counts).

pub mod window;

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use serde::{Deserialize, Serialize};

use crate::domain::{Interner, Parsed};
use crate::policy::{Reason, Reasons};
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
        if listed.is_empty() && user_count == 0 {
            return Plan(None);
        }
        let data = PlanData { features: listed.into_boxed_slice(), user_count };
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

    /// The feature, if the plan includes it.
    pub fn feature(&self, code: &str) -> Option<&PlanFeature> {
        let code = FeatureCode::known(code)?;
        self.features().iter().find(|f| f.code == code)
    }
}

/// What a check asks of the plan besides money.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanAsk {
    pub feature: Option<FeatureAsk>,
    /// Seats the caller wants to have: allowed iff within the plan's user count.
    pub seats: Option<u64>,
}

impl PlanAsk {
    pub fn is_empty(&self) -> bool {
        self.feature.is_none() && self.seats.is_none()
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

/// What the plan says of the feature asked about (the answer's `feature`, with the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FeatureJudged {
    /// The plan includes it (listed as a feature, or carrying a limit).
    pub included: bool,
    /// Its limit; none for a feature without a count (or not in the plan).
    pub limit: Option<u64>,
    /// How many are in use when there is a limit: as the caller counted them (`in_use`), or
    /// as usage-gate counted them in the window (rounded up).
    pub used: Option<u64>,
    /// The window usage-gate counts it over, and when it restarts (Unix seconds).
    pub window: Option<(Window, i64)>,
}

impl FeatureJudged {
    /// A limited feature of the plan as counted in its window (`used` rounded up), ending at
    /// `end` (Unix seconds).
    pub fn counted(limit: u64, used: f64, window: Window, end: i64) -> Self {
        Self { included: true, limit: Some(limit), used: Some(rounded_up(used)), window: Some((window, end)) }
    }

    /// `limit - used`, never negative; none unless both are known.
    pub fn remaining(&self) -> Option<u64> {
        self.limit.zip(self.used).map(|(limit, used)| limit.saturating_sub(used))
    }
}

/// The seats asked for and the plan's user count (none: the plan sets none).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SeatsJudged {
    pub requested: u64,
    pub limit: Option<u64>,
}

/// The plan's judgement of an ask: the reasons that refuse it (empty: the plan allows it), and
/// what the answer shows of it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PlanJudgement {
    pub reasons: Reasons,
    pub feature: Option<FeatureJudged>,
    pub seats: Option<SeatsJudged>,
}

/// A count as the answer shows it: whole units, rounded up.
fn rounded_up(used: f64) -> u64 {
    used.max(0.0).ceil() as u64
}

/// Whether `quantity` more fit beside `used` within `limit`.
pub fn fits(used: f64, quantity: f64, limit: u64) -> bool {
    used + quantity <= limit as f64
}

/// Judges `ask` against `plan`: a feature must be included, and fit `quantity` more within its
/// limit beside what is in use: `in_use` when the caller counts it, else what usage-gate counted
/// in the feature's window (`counted`, asked only for a limited feature); seats must be within
/// the user count. A `disabled` customer's count of 0 is none at all (BillaBear lists nothing
/// for it), whatever `zero_user_count` says of an active customer's.
pub fn judge(
    plan: &Plan,
    ask: &PlanAsk,
    disabled: bool,
    settings: &EntitlementSettings,
    counted: impl FnOnce(&PlanFeature) -> Counted,
) -> PlanJudgement {
    let mut judgement = PlanJudgement::default();
    if let Some(asked) = &ask.feature {
        let found = plan.feature(&asked.code);
        let limited = found.filter(|f| f.limit().is_some());
        let limit = limited.and_then(PlanFeature::limit);
        let (used, window) = match (limited, asked.in_use) {
            (Some(_), Some(in_use)) => (Some(in_use as f64), None),
            (Some(feature), None) => {
                let c = counted(feature);
                (Some(c.used), Some((c.window, c.bounds.end)))
            }
            (None, _) => (None, None),
        };
        if found.is_none() {
            judgement.reasons.insert(Reason::FeatureNotInPlan);
        } else if let (Some(limit), Some(used)) = (limit, used)
            && !fits(used, asked.quantity as f64, limit)
        {
            judgement.reasons.insert(Reason::FeatureLimitReached);
        }
        let used = used.map(rounded_up);
        judgement.feature = Some(FeatureJudged { included: found.is_some(), limit, used, window });
    }
    if let Some(requested) = ask.seats {
        let limit = match (plan.user_count(), *settings.zero_user_count) {
            (0, ZeroUserCount::Unlimited) if !disabled => None,
            (count, _) => Some(count),
        };
        if limit.is_some_and(|limit| requested > limit) {
            judgement.reasons.insert(Reason::SeatsExceeded);
        }
        judgement.seats = Some(SeatsJudged { requested, limit });
    }
    judgement
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan() -> Plan {
        Plan::new([("projects", 25), ("api_calls", 10_000)], ["sso", "projects"], 10)
    }

    fn feature(code: &str, in_use: Option<u64>, quantity: u64) -> PlanAsk {
        PlanAsk { feature: Some(FeatureAsk { code: code.into(), quantity, in_use }), seats: None }
    }

    fn seats(n: u64) -> PlanAsk {
        PlanAsk { feature: None, seats: Some(n) }
    }

    /// Nothing counted by usage-gate (the caller gives `in_use`, or nothing was sent).
    fn nothing(_: &PlanFeature) -> Counted {
        Counted { used: 0.0, window: Window::BillingPeriod, bounds: Bounds { start: 0, end: 60 } }
    }

    fn judge(plan: &Plan, ask: &PlanAsk, disabled: bool, settings: &EntitlementSettings) -> PlanJudgement {
        super::judge(plan, ask, disabled, settings, nothing)
    }

    fn reasons(plan: &Plan, ask: &PlanAsk) -> Vec<Reason> {
        judge(plan, ask, false, &EntitlementSettings::default()).reasons.iter().collect()
    }

    #[test]
    fn a_feature_is_included_when_listed_or_limited_and_codes_are_shared() {
        let plan = plan();
        assert_eq!(plan.features().len(), 3, "projects is listed twice: one entry");
        assert_eq!(plan.feature("projects").and_then(PlanFeature::limit), Some(25), "the limit stays");
        assert_eq!(plan.feature("sso").map(PlanFeature::limit), Some(None));
        assert!(plan.feature("audit_log").is_none());
        let projects = FeatureCode::known("projects").unwrap();
        assert_eq!(Plan::new([("projects", 5)], [], 0).features()[0].code, projects);
        assert_eq!(projects.as_str(), "projects");
        let again = Plan::new([("api_calls", 10_000), ("projects", 25)], ["projects", "sso"], 10);
        assert!(
            Arc::ptr_eq(again.0.as_ref().unwrap(), plan.0.as_ref().unwrap()),
            "customers on one plan share its copy, whatever order it was listed in"
        );
        assert_eq!(Plan::new([], [], 0), Plan::default());
        assert!(FeatureCode::known("never-listed-by-any-plan").is_none(), "asking does not intern");
    }

    #[test]
    fn a_feature_not_in_the_plan_is_refused_and_one_in_it_allowed() {
        let plan = plan();
        assert_eq!(reasons(&plan, &feature("sso", None, 1)), []);
        assert_eq!(reasons(&plan, &feature("audit_log", None, 1)), [Reason::FeatureNotInPlan]);
        let view =
            judge(&plan, &feature("audit_log", Some(3), 1), false, &Default::default()).feature.unwrap();
        assert_eq!((view.included, view.limit, view.used, view.remaining()), (false, None, None, None));
        assert_eq!(reasons(&Plan::default(), &feature("sso", None, 1)), [Reason::FeatureNotInPlan]);
    }

    #[test]
    fn what_the_caller_has_in_use_fits_when_it_and_the_quantity_are_within_the_limit() {
        let plan = plan();
        assert_eq!(reasons(&plan, &feature("projects", Some(24), 1)), [], "24 + 1 = 25 fits");
        assert_eq!(reasons(&plan, &feature("projects", Some(25), 1)), [Reason::FeatureLimitReached]);
        assert_eq!(reasons(&plan, &feature("projects", Some(20), 6)), [Reason::FeatureLimitReached]);
        assert_eq!(
            reasons(&plan, &feature("projects", Some(u64::MAX), u64::MAX)),
            [Reason::FeatureLimitReached]
        );
        let view =
            judge(&plan, &feature("projects", Some(30), 1), false, &Default::default()).feature.unwrap();
        assert_eq!((view.limit, view.used, view.remaining()), (Some(25), Some(30), Some(0)));
        assert_eq!(reasons(&plan, &feature("sso", Some(1_000), 5)), [], "no count: nothing to exceed");
    }

    #[test]
    fn without_in_use_what_usage_gate_counted_in_the_window_is_used() {
        let plan = plan();
        let settings = EntitlementSettings::default();
        let counted = |used: f64| {
            move |f: &PlanFeature| {
                assert_eq!(f.code.as_str(), "api_calls", "asked only for the feature asked about");
                Counted { used, window: Window::Day, bounds: Bounds { start: 0, end: 86_400 } }
            }
        };
        let ask = feature("api_calls", None, 1);
        let at = |used: f64| super::judge(&plan, &ask, false, &settings, counted(used));
        assert_eq!(at(9_999.0).reasons, Reasons::default(), "9,999 + 1 fits 10,000");
        assert_eq!(at(10_000.0).reasons.iter().collect::<Vec<_>>(), [Reason::FeatureLimitReached]);
        let view = at(2.5).feature.unwrap();
        assert_eq!(
            (view.used, view.remaining(), view.window),
            (Some(3), Some(9_997), Some((Window::Day, 86_400)))
        );
        let asked_more = feature("api_calls", None, 11);
        assert!(!super::judge(&plan, &asked_more, false, &settings, counted(9_990.0)).reasons.is_empty());
        // A feature without a count, or not in the plan, asks nothing of the counts.
        let unasked = |_: &PlanFeature| -> Counted { panic!("not counted") };
        assert!(
            super::judge(&plan, &feature("sso", None, 1), false, &settings, unasked)
                .feature
                .unwrap()
                .window
                .is_none()
        );
        super::judge(&plan, &feature("audit_log", None, 1), false, &settings, unasked);
    }

    #[test]
    fn events_count_towards_their_feature_or_the_one_a_metric_is_named_for() {
        Plan::new([("counted_calls", 10)], [], 0);
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
    fn seats_fit_within_the_user_count_and_a_count_of_zero_is_read_as_configured() {
        let plan = plan();
        assert_eq!(reasons(&plan, &seats(10)), []);
        assert_eq!(reasons(&plan, &seats(11)), [Reason::SeatsExceeded]);
        let none = Plan::default();
        assert_eq!(reasons(&none, &seats(500)), [], "0 users: the plan sets none");
        assert_eq!(
            judge(&none, &seats(500), false, &Default::default()).seats,
            Some(SeatsJudged { requested: 500, limit: None })
        );
        let strict =
            EntitlementSettings { zero_user_count: ZeroUserCount::None.into(), ..Default::default() };
        assert_eq!(
            judge(&none, &seats(1), false, &strict).reasons.iter().collect::<Vec<_>>(),
            [Reason::SeatsExceeded]
        );
        assert_eq!(judge(&none, &seats(0), false, &strict).reasons, Reasons::default(), "0 seats always fit");
        let disabled = judge(&none, &seats(1), true, &Default::default());
        assert_eq!(
            (disabled.reasons.iter().collect::<Vec<_>>(), disabled.seats.unwrap().limit),
            (vec![Reason::SeatsExceeded], Some(0)),
            "a disabled customer's 0 is none"
        );
    }

    #[test]
    fn negative_figures_from_billabear_read_as_zero() {
        let plan = Plan::new([("projects", -3)], [], -1);
        assert_eq!(plan.feature("projects").and_then(PlanFeature::limit), Some(0));
        assert_eq!(plan.user_count(), 0);
    }
}
