//! usage-gate's own limit rules, as operators write them (`rules` keeps them): a limit on a
//! measure (money, or a metric's units) over a window, for one customer, the customers on a
//! plan, or all, optionally per subject (a user, a workspace, an API key of the customer's),
//! hard or soft, with a ladder of thresholds told as they are crossed.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use internment::ArcIntern;
use smallvec::SmallVec;
use uuid::Uuid;

use super::{Case, Counts, Findings, Kind, Question, Tally, Write, at};
use crate::domain::{CustomerId, MetricCode, PlanId, Subject, Timestamp};
use crate::entitlements::{Period, TimeZone, Window};
use crate::policy::Reason;

/// One rule as a replica holds it: its id and limit, and the shape it shares with every rule
/// written alike. 56 bytes: a million customers with a "$50 a day" rule each hold a million ids
/// and limits and one shape (`cargo run --release --example cache-memory -- 1000000 --rules`).
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub id: RuleId,
    /// Minor units for `cost`, units for a metric; more than 0.
    pub limit: i64,
    shape: ArcIntern<Shape>,
}

/// A rule's id, held as the text an answer shows: formatting it on every check cost 5 rules
/// ~780 instructions (`bench/check_instructions.py --rules`), and the text is compared as
/// cheaply as the 16 bytes.
#[derive(Clone, Copy, Eq, PartialOrd, Ord)]
pub struct RuleId([u8; 36]);

impl PartialEq for RuleId {
    /// The first 8 characters tell two ids apart all but once in 4 billion: compared as one word
    /// before the 36 (a `bcmp` call), which cost a check's 5 rules ~250 instructions of counting
    /// (`bench/check_instructions.py --rules`).
    fn eq(&self, other: &Self) -> bool {
        let head = |id: &Self| {
            u64::from_ne_bytes([id.0[0], id.0[1], id.0[2], id.0[3], id.0[4], id.0[5], id.0[6], id.0[7]])
        };
        head(self) == head(other) && self.0 == other.0
    }
}

impl RuleId {
    pub fn uuid(&self) -> Uuid {
        Uuid::try_parse_ascii(&self.0).expect("a rule id is written from a uuid")
    }

    /// Hyphenated, lower case.
    pub fn text(&self) -> &[u8; 36] {
        &self.0
    }
}

impl From<Uuid> for RuleId {
    fn from(id: Uuid) -> Self {
        let mut text = [0; 36];
        id.hyphenated().encode_lower(&mut text);
        Self(text)
    }
}

impl std::fmt::Display for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(std::str::from_utf8(&self.0).expect("ASCII"))
    }
}

impl std::fmt::Debug for RuleId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl serde::Serialize for RuleId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// What rules written alike share: all of a rule but its id, limit and whom it is for.
#[derive(Debug)]
pub struct Shape {
    /// Of whose rule: a customer's replaces a plan's, a plan's an `all` rule (see [`applicable`]).
    rank: u8,
    pub measure: Measure,
    pub window: RuleWindow,
    pub mode: Mode,
    /// Each subject is limited separately (to the limit, or its own in `subject_limits`).
    pub per_subject: bool,
    pub subject_limits: BTreeMap<Subject, i64>,
    /// Percent of the limit, ascending, each told once per window when crossed.
    pub thresholds: Vec<u16>,
    /// `,"measure":…,"window":…,"mode":…,"limit":` as JSON: what an answer shows of the rule
    /// after its id, written once. Writing them on every check cost 5 rules ~3,000 instructions
    /// (`bench/check_instructions.py --rules`).
    written: Box<str>,
    /// Where a calendar window was placed last (by any thread).
    placed: LastPlaced,
}

impl PartialEq for Shape {
    fn eq(&self, other: &Self) -> bool {
        self.key() == other.key()
    }
}

impl Eq for Shape {}

impl std::hash::Hash for Shape {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key().hash(state)
    }
}

type ShapeKey<'a> = (u8, &'a Measure, &'a RuleWindow, Mode, bool, &'a BTreeMap<Subject, i64>, &'a [u16]);

impl Shape {
    /// What makes two shapes one (what is written of them and where they were placed follow).
    fn key(&self) -> ShapeKey<'_> {
        let Shape { rank, measure, window, mode, per_subject, subject_limits, thresholds, .. } = self;
        (*rank, measure, window, *mode, *per_subject, subject_limits, thresholds)
    }

    /// The rule's members after its id, as JSON, up to its limit's value (see `written`).
    pub fn written(&self) -> &str {
        &self.written
    }

    /// Where the window stands at `now_ms` ([`RuleWindow::placed`]); a calendar window's
    /// placement is reused while `now_ms` is inside it. Reading the local time cost ~1,300
    /// instructions a rule, a thread's copy of the placements ~250 (`bench/check_instructions.py
    /// --rules`).
    pub fn placed(&self, now_ms: i64, period: Option<Period>) -> Placed {
        if !matches!(self.window, RuleWindow::Calendar { .. }) {
            return self.window.placed(now_ms, period);
        }
        if let Some(placed) = self.placed.at(now_ms) {
            return placed;
        }
        let placed = self.window.placed(now_ms, period);
        self.placed.keep(placed);
        placed
    }
}

impl Rule {
    pub fn new(id: Uuid, spec: &RuleSpec) -> Self {
        #[derive(serde::Serialize)]
        struct Members<'a> {
            measure: &'a Measure,
            window: &'a RuleWindow,
            mode: &'static str,
        }
        let members = Members { measure: &spec.measure, window: &spec.window, mode: spec.mode.as_str() };
        let mut written = serde_json::to_string(&members).unwrap_or_else(|_| "{}".into());
        written.pop(); // the closing brace: what was judged follows, the limit first
        written.push_str(",\"limit\":");
        written.replace_range(..1, ","); // the opening one: the id comes first
        let shape = Shape {
            rank: spec.scope.rank(),
            measure: spec.measure.clone(),
            window: spec.window,
            mode: spec.mode,
            per_subject: spec.per_subject,
            subject_limits: spec.subject_limits.clone(),
            thresholds: spec.thresholds.clone(),
            written: written.into(),
            placed: LastPlaced::default(),
        };
        Self { id: id.into(), limit: spec.limit, shape: ArcIntern::new(shape) }
    }

    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// What the rule allows `subject`: its own limit in `subject_limits`, else the rule's.
    pub fn limit_for(&self, subject: Option<&Subject>) -> i64 {
        subject
            .filter(|_| self.shape.per_subject)
            .and_then(|s| self.shape.subject_limits.get(s))
            .copied()
            .unwrap_or(self.limit)
    }

    /// Whose usage the rule judges and counts of usage by `subject`: the subject's for a
    /// per-subject rule, else the whole customer's (`Some(None)`); none when a per-subject rule
    /// meets usage that names no subject (it neither judges nor counts it).
    pub fn judged_subject<'s>(&self, subject: Option<&'s Subject>) -> Option<Option<&'s Subject>> {
        match (self.shape.per_subject, subject) {
            (false, _) => Some(None),
            (true, Some(subject)) => Some(Some(subject)),
            (true, None) => None,
        }
    }

    /// Rules that stand for the same limit at different scopes: one measure, one window, per
    /// subject or for the whole customer.
    fn same_limit(&self, other: &Rule) -> bool {
        let (a, b) = (&*self.shape, &*other.shape);
        a.measure == b.measure && a.window == b.window && a.per_subject == b.per_subject
    }
}

/// A calendar window's last placement: its start and length in seconds in one word, so a
/// reader never sees the start of one placement with the length of another.
#[derive(Debug, Default)]
struct LastPlaced(AtomicU64);

/// Bits of the length (a month is under 2^22 seconds); the start takes the rest (2^40 seconds).
const LENGTH_BITS: u32 = 24;

impl LastPlaced {
    fn at(&self, now_ms: i64) -> Option<Placed> {
        let word = self.0.load(Ordering::Relaxed);
        let start = (word >> LENGTH_BITS) as i64 * 1000;
        let end = start + (word & ((1 << LENGTH_BITS) - 1)) as i64 * 1000;
        (start <= now_ms && now_ms < end).then_some(Placed::whole(start, end))
    }

    fn keep(&self, placed: Placed) {
        let (start, length) = (placed.since_ms / 1000, (placed.expires_ms - placed.since_ms) / 1000);
        if (0..1 << 40).contains(&start) && (1..1 << LENGTH_BITS).contains(&length) {
            self.0.store((start as u64) << LENGTH_BITS | length as u64, Ordering::Relaxed);
        }
    }
}

/// What an operator writes of a rule.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleSpec {
    pub scope: Scope,
    pub measure: Measure,
    /// Minor units for `cost`, units for a metric; more than 0.
    pub limit: i64,
    pub window: RuleWindow,
    pub mode: Mode,
    /// Each subject is limited separately (to `limit`, or its own in `subject_limits`).
    pub per_subject: bool,
    pub subject_limits: BTreeMap<Subject, i64>,
    /// Percent of the limit, ascending, each told once per window when crossed.
    pub thresholds: Vec<u16>,
}

/// Whom a rule applies to (also what a replica's copy of the rules is keyed by).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    Customer(CustomerId),
    /// Every customer with an active subscription on the plan.
    Plan(PlanId),
    All,
}

impl Scope {
    pub fn kind(&self) -> &'static str {
        match self {
            Scope::Customer(_) => "customer",
            Scope::Plan(_) => "plan",
            Scope::All => "all",
        }
    }
}

/// What a rule counts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Measure {
    /// Money, priced as the projection prices usage (the metric's price, tax): minor units.
    Cost,
    /// The `value` of the events of a metric: units.
    Metric(MetricCode),
}

/// The window a rule counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleWindow {
    /// An hour, a day, an ISO week or a month, from its boundary in `zone`.
    Calendar { unit: Window, zone: TimeZone },
    /// The last `seconds`, exact to a sixtieth of them.
    Rolling { seconds: u32 },
    /// The customer's billing period, as BillaBear's subscription sets it.
    BillingPeriod,
}

/// As a rule is written: `{"cost": {}}` or `{"metric": CODE}`.
impl serde::Serialize for Measure {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(1))?;
        match self {
            Measure::Cost => map.serialize_entry("cost", &serde_json::Map::new())?,
            Measure::Metric(code) => map.serialize_entry("metric", code.as_str())?,
        }
        map.end()
    }
}

/// As a rule is written: `{"calendar": UNIT, "time_zone": IANA}`, `{"rolling_s": S}` or
/// `{"billing_period": {}}`.
impl serde::Serialize for RuleWindow {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(None)?;
        match self {
            RuleWindow::Calendar { unit, zone } => {
                map.serialize_entry("calendar", unit.as_str())?;
                map.serialize_entry("time_zone", zone.0.name())?;
            }
            RuleWindow::Rolling { seconds } => map.serialize_entry("rolling_s", seconds)?,
            RuleWindow::BillingPeriod => map.serialize_entry("billing_period", &serde_json::Map::new())?,
        }
        map.end()
    }
}

/// The longest rolling window: 31 days.
pub const MAX_ROLLING_S: u32 = 31 * 86_400;

/// What a rule does at its limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Refuses.
    Hard,
    /// Allows, with status `warning`.
    Soft,
}

crate::written_as!(Mode { "hard" => Hard, "soft" => Soft });

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Hard => "hard",
            Mode::Soft => "soft",
        }
    }
}

/// The ladder a rule has unless it says otherwise.
pub const DEFAULT_THRESHOLDS: [u16; 2] = [80, 100];

/// Thresholds are percents of the limit from 1 to this.
pub const MAX_THRESHOLD: u16 = 1000;

impl Scope {
    fn rank(&self) -> u8 {
        match self {
            Scope::Customer(_) => 2,
            Scope::Plan(_) => 1,
            Scope::All => 0,
        }
    }
}

/// Of `rules` (every rule of a customer's scopes: its own, its plans' and `all`), the ones
/// that bind it: of each limit (one measure, one window, per subject or not), the customer's own
/// rules replace its plans', and a plan's replace the `all` rules. Every rule left applies: the
/// most restrictive binds.
pub fn applicable(rules: &mut Vec<Rule>) {
    let replaced: Vec<bool> = rules
        .iter()
        .map(|rule| rules.iter().any(|o| o.same_limit(rule) && o.shape.rank > rule.shape.rank))
        .collect();
    let mut kept = replaced.iter();
    rules.retain(|_| !kept.next().is_some_and(|r| *r));
}

/// Where a rule's window stands at one instant (Unix ms): the bucket usage is counted in now,
/// the oldest bucket still counted, and when the window restarts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placed {
    /// The bucket a write now is counted in: the window's start for a calendar or billing
    /// window, a sixtieth of a rolling window.
    pub bucket_ms: i64,
    /// Buckets from this start on are counted.
    pub since_ms: i64,
    /// When the bucket stops counting (its row may be pruned after).
    pub expires_ms: i64,
    /// When a calendar or billing window ends (none for a rolling one: it slides).
    pub resets_ms: Option<i64>,
}

impl Placed {
    /// A calendar or billing window from `start_ms` to `end_ms`: one bucket, restarting at its end.
    fn whole(start_ms: i64, end_ms: i64) -> Self {
        Placed { bucket_ms: start_ms, since_ms: start_ms, expires_ms: end_ms, resets_ms: Some(end_ms) }
    }
}

/// A rolling window's buckets: its length in sixtieths, so what it counts is exact to a
/// sixtieth of it (a bucket leaves whole, up to that much early).
pub const ROLLING_BUCKETS: i64 = 60;

impl RuleWindow {
    /// Where the window stands at `now_ms`, by the customer's billing `period` (as the snapshot
    /// has it; a customer without one counts by the calendar month in UTC).
    pub fn placed(&self, now_ms: i64, period: Option<Period>) -> Placed {
        let calendar =
            |bounds: crate::entitlements::Bounds| Placed::whole(bounds.start * 1000, bounds.end * 1000);
        let now = at(now_ms.max(0) as u64);
        match *self {
            RuleWindow::Calendar { unit, zone } => calendar(unit.bounds(now, zone.0, None)),
            RuleWindow::BillingPeriod => {
                calendar(Window::BillingPeriod.bounds(now, chrono_tz::Tz::UTC, period))
            }
            RuleWindow::Rolling { seconds } => {
                let width = (i64::from(seconds) * 1000 / ROLLING_BUCKETS).max(1);
                let bucket = now_ms - now_ms.rem_euclid(width);
                Placed {
                    bucket_ms: bucket,
                    since_ms: bucket - (ROLLING_BUCKETS - 1) * width,
                    expires_ms: bucket + ROLLING_BUCKETS * width,
                    resets_ms: None,
                }
            }
        }
    }
}

/// What a write adds to a rule's measure: its price (minor units), and its units of a metric.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Added<'a> {
    pub cost: i64,
    pub units: Option<(&'a str, f64)>,
}

impl Added<'_> {
    fn to(&self, measure: &Measure) -> f64 {
        match measure {
            Measure::Cost => self.cost as f64,
            Measure::Metric(code) => match self.units {
                Some((c, units)) if c == code.as_str() => units,
                _ => 0.0,
            },
        }
    }
}

/// What a case adds to each rule's measure: a check's `cost` and the units of the `feature`
/// asked about (a metric's code); an event's price and value; a hold's amount and units.
fn added<'a>(case: &Case<'a>) -> Added<'a> {
    let cost = case.cost.unwrap_or(0).max(0);
    let units = match case.question {
        Question::Check(ask) => ask.feature.as_ref().map(|f| (f.code.as_str(), f.quantity as f64)),
        Question::Write(Write::Event { code, value, .. }) => Some((code, value)),
        Question::Write(Write::Hold { event, .. }) => event,
    };
    Added { cost, units }
}

/// One row a write adds to a rule's counter: the customer's (and, per subject, the
/// subject's) bucket of the rule's window.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleTally {
    pub rule: Uuid,
    pub customer: CustomerId,
    /// None: the rule counts the whole customer.
    pub subject: Option<Subject>,
    pub bucket_ms: i64,
    pub expires_ms: i64,
    /// The window's buckets from this start on count (its threshold crossings are decided on
    /// their total).
    pub since_ms: i64,
    pub amount: f64,
}

/// What a write of `added` by `subject` adds to each of `rules` at `now_ms`: every rule whose
/// measure it adds to, the whole customer's or the subject's (a per-subject rule counts nothing
/// of a write without a subject).
pub fn tallies(
    rules: &[Rule],
    customer: CustomerId,
    subject: Option<&Subject>,
    added: Added,
    now_ms: i64,
    period: Option<Period>,
) -> Vec<RuleTally> {
    rules
        .iter()
        .filter_map(|rule| {
            let amount = added.to(&rule.shape.measure);
            let subject = rule.judged_subject(subject)?.cloned();
            (amount > 0.0).then(|| {
                let placed = rule.shape.placed(now_ms, period);
                RuleTally {
                    rule: rule.id.uuid(),
                    customer,
                    subject,
                    bucket_ms: placed.bucket_ms,
                    expires_ms: placed.expires_ms,
                    since_ms: placed.since_ms,
                    amount,
                }
            })
        })
        .collect()
}

/// What a rule counted, asked of [`Counts::rules_used`]: of the customer (of `subject` alone,
/// for a per-subject rule) in the buckets from `since_ms` on; `used` is the answer (0 until
/// answered).
#[derive(Debug, Clone, Copy)]
pub struct RuleAsk<'a> {
    pub rule: &'a Rule,
    pub subject: Option<&'a Subject>,
    pub since_ms: i64,
    /// When the rule's window restarts (for the answer).
    pub resets_ms: Option<i64>,
    pub used: f64,
}

/// A rule as judged for a case, as an answer shows it (`check::wire` writes it; its schema:
/// `routes::schema`): the rule (its id, measure, window and mode as written), what it allows,
/// what was used in its window before, and whether it refuses.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleJudged {
    pub rule: Rule,
    /// The subject judged by a per-subject rule.
    pub subject: Option<Subject>,
    /// What it allows in its window (the subject's own limit, for a subject with one).
    pub limit: i64,
    /// Used in the window before what is asked (events, and on a write open holds too).
    pub used: f64,
    /// When a calendar or billing window ends and the count restarts (none for a rolling one).
    pub resets_at: Option<Timestamp>,
    /// Why it refuses (or, soft, warns); none when what is asked fits.
    pub reason: Option<Reason>,
}

impl RuleJudged {
    /// Whether it refuses (a hard rule at or past its limit).
    pub fn refuses(&self) -> bool {
        self.rule.shape.mode == Mode::Hard && self.reason.is_some()
    }

    pub fn remaining(&self) -> f64 {
        (self.limit as f64 - self.used).max(0.0)
    }
}

/// Why a rule refuses what adds `asked` beside `used` under `limit`: a write fits while the
/// total stays within the limit; a check asking nothing is refused once the limit is reached
/// (nothing more fits).
fn refusal(used: f64, asked: f64, limit: i64, mode: Mode) -> Option<Reason> {
    let limit = limit as f64;
    let over = if asked > 0.0 { used + asked > limit } else { used >= limit };
    match (over, mode) {
        (false, _) => None,
        (true, Mode::Soft) => Some(Reason::SoftLimitExceeded),
        (true, Mode::Hard) if used >= limit => Some(Reason::RuleLimitExceeded),
        (true, Mode::Hard) => Some(Reason::WouldExceedRuleLimit),
    }
}

/// usage-gate's own rules as a kind of limit: every rule that binds the customer must allow
/// what is asked; an admitted write is counted in each rule it adds to.
pub struct RuleLimit;

impl Kind for RuleLimit {
    fn judge(&self, case: &Case, counts: &dyn Counts, found: &mut Findings) {
        if case.rules.is_empty() {
            return;
        }
        let added = added(case);
        let now_ms = case.now_ms as i64;
        // On the stack, pushed one by one: a vector of them cost 5 rules ~450 instructions a
        // check, collecting them ~200 more (`bench/check_instructions.py --rules`).
        let mut asks: SmallVec<[RuleAsk; 8]> = SmallVec::new();
        for rule in case.rules {
            let Some(subject) = rule.judged_subject(case.subject) else { continue };
            let placed = rule.shape.placed(now_ms, case.known.period);
            asks.push(RuleAsk {
                rule,
                subject,
                since_ms: placed.since_ms,
                resets_ms: placed.resets_ms,
                used: 0.0,
            });
        }
        counts.rules_used(case, &mut asks);
        found.rules.reserve(asks.len());
        // A write is told only of the rules that refuse it; a check of every rule it is under.
        let write = matches!(case.question, Question::Write(_));
        for &RuleAsk { rule, subject, resets_ms, used, .. } in &asks {
            let limit = rule.limit_for(subject);
            let reason = refusal(used, added.to(&rule.shape.measure), limit, rule.shape.mode);
            if let Some(reason) = reason {
                found.reasons.insert(reason);
            } else if write {
                continue;
            }
            let judged = RuleJudged {
                rule: rule.clone(),
                subject: subject.cloned(),
                limit,
                used,
                resets_at: resets_ms.map(|ms| Timestamp(ms.max(0) as u64)),
                reason,
            };
            found.rules.push(judged);
        }
    }

    fn count(&self, case: &Case, tally: &mut dyn Tally) {
        if case.rules.is_empty() {
            return;
        }
        // A hold counts while it is open, told once by the money's kind (`Tally::hold`), not in
        // a counter.
        let Question::Write(Write::Event { .. }) = case.question else { return };
        let (now_ms, period) = (case.now_ms as i64, case.known.period);
        for row in tallies(case.rules, case.customer, case.subject, added(case), now_ms, period) {
            tally.rule(row);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(scope: Scope, measure: Measure, window: RuleWindow, per_subject: bool, limit: i64) -> RuleSpec {
        RuleSpec {
            scope,
            measure,
            limit,
            window,
            mode: Mode::Hard,
            per_subject,
            subject_limits: BTreeMap::new(),
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
        }
    }

    fn rule(scope: Scope, measure: Measure, window: RuleWindow, per_subject: bool, limit: i64) -> Rule {
        Rule::new(Uuid::new_v4(), &spec(scope, measure, window, per_subject, limit))
    }

    const DAY: RuleWindow = RuleWindow::Calendar { unit: Window::Day, zone: TimeZone(chrono_tz::Tz::UTC) };
    const HOUR: RuleWindow = RuleWindow::Rolling { seconds: 3600 };

    #[test]
    fn a_customers_rule_replaces_its_plans_which_replaces_alls_of_the_same_limit_only() {
        let (acme, globex) = (CustomerId::new_v4(), CustomerId::new_v4());
        let (pro, free) = (PlanId::new_v4(), PlanId::new_v4());
        let calls = Measure::Metric(MetricCode::parse("api_calls").unwrap());
        let rules = [
            (Scope::All, Measure::Cost, DAY, false, 10_000),
            (Scope::Plan(pro), Measure::Cost, DAY, false, 20_000),
            (Scope::Customer(acme), Measure::Cost, DAY, false, 5_000),
            (Scope::All, Measure::Cost, DAY, true, 500), // per member
            (Scope::All, calls.clone(), HOUR, false, 1_000),
            (Scope::Plan(free), calls, HOUR, false, 100),
            (Scope::Customer(globex), Measure::Cost, HOUR, false, 50),
        ];
        // The customer's scopes' rules, as the rules' copy finds them.
        let applied = |customer: CustomerId, plans: &[PlanId]| -> Vec<i64> {
            let mut scoped: Vec<Rule> = rules
                .iter()
                .filter(|(scope, ..)| match scope {
                    Scope::Customer(c) => *c == customer,
                    Scope::Plan(p) => plans.contains(p),
                    Scope::All => true,
                })
                .map(|(scope, measure, window, per_subject, limit)| {
                    rule(*scope, measure.clone(), *window, *per_subject, *limit)
                })
                .collect();
            applicable(&mut scoped);
            scoped.iter().map(|r| r.limit).collect()
        };
        assert_eq!(
            applied(acme, &[pro]),
            [5_000, 500, 1_000],
            "its own day rule; per member and calls stand"
        );
        assert_eq!(applied(globex, &[pro, free]), [20_000, 500, 100, 50], "the plans' replace all's");
        assert_eq!(applied(CustomerId::new_v4(), &[]), [10_000, 500, 1_000]);
    }

    #[test]
    fn a_subject_has_its_own_limit_on_a_per_subject_rule_only() {
        let alice = Subject::parse("alice").unwrap();
        let mut members = spec(Scope::All, Measure::Cost, DAY, true, 500);
        members.subject_limits.insert(alice.clone(), 2_000);
        let per_member = Rule::new(Uuid::new_v4(), &members);
        assert_eq!(per_member.limit_for(Some(&alice)), 2_000);
        assert_eq!(per_member.limit_for(Some(&Subject::parse("bob").unwrap())), 500);
        assert_eq!(per_member.limit_for(None), 500);
        members.per_subject = false;
        let total = Rule::new(Uuid::new_v4(), &members);
        assert_eq!(total.limit_for(Some(&alice)), 500);
    }

    #[test]
    fn a_rolling_window_counts_its_last_sixty_buckets_and_a_calendar_one_restarts_at_its_boundary() {
        let rolling = RuleWindow::Rolling { seconds: 60 }.placed(10_500, None);
        assert_eq!(
            (rolling.bucket_ms, rolling.since_ms, rolling.expires_ms, rolling.resets_ms),
            (10_000, 10_000 - 59_000, 70_000, None)
        );
        let paris = TimeZone("Europe/Paris".parse().unwrap());
        // 2027-03-10T12:00Z: the Paris day began at 23:00Z the day before.
        let day = RuleWindow::Calendar { unit: Window::Day, zone: paris }
            .placed(super::super::tests::NOW_MS as i64, None);
        assert_eq!((day.bucket_ms, day.since_ms), (1_805_324_400_000, 1_805_324_400_000));
        assert_eq!((day.expires_ms, day.resets_ms), (1_805_410_800_000, Some(1_805_410_800_000)));
        let period = Period::new(1_805_000_000, 1_806_000_000);
        let billing = RuleWindow::BillingPeriod.placed(super::super::tests::NOW_MS as i64, Some(period));
        assert_eq!((billing.since_ms, billing.resets_ms), (1_805_000_000_000, Some(1_806_000_000_000)));
    }

    #[test]
    fn a_rule_refuses_what_would_pass_its_limit_a_bare_check_once_full_and_a_soft_rule_warns() {
        assert_eq!(refusal(2.0, 1.0, 3, Mode::Hard), None, "up to the limit fits");
        assert_eq!(refusal(2.9, 0.0, 3, Mode::Hard), None);
        assert_eq!(refusal(3.0, 0.0, 3, Mode::Hard), Some(Reason::RuleLimitExceeded), "full");
        assert_eq!(refusal(2.0, 2.0, 3, Mode::Hard), Some(Reason::WouldExceedRuleLimit));
        assert_eq!(refusal(3.0, 1.0, 3, Mode::Hard), Some(Reason::RuleLimitExceeded));
        assert_eq!(refusal(3.0, 1.0, 3, Mode::Soft), Some(Reason::SoftLimitExceeded));
    }

    #[test]
    fn a_write_counts_in_every_rule_it_adds_to_and_per_subject_only_with_a_subject() {
        let calls = Measure::Metric(MetricCode::parse("api_calls").unwrap());
        let rules = [
            rule(Scope::All, Measure::Cost, DAY, false, 5_000),
            rule(Scope::All, calls, HOUR, true, 100),
            rule(Scope::All, Measure::Metric(MetricCode::parse("storage").unwrap()), DAY, false, 9),
        ];
        let customer = CustomerId::new_v4();
        let added = Added { cost: 12, units: Some(("api_calls", 3.0)) };
        let bob = Subject::parse("bob").unwrap();
        let rows = tallies(&rules, customer, Some(&bob), added, 1_000_000, None);
        let seen: Vec<(Uuid, Option<&str>, f64)> =
            rows.iter().map(|r| (r.rule, r.subject.as_ref().map(|s| s.as_str()), r.amount)).collect();
        assert_eq!(seen, [(rules[0].id.uuid(), None, 12.0), (rules[1].id.uuid(), Some("bob"), 3.0)]);
        let anonymous = tallies(&rules, customer, None, added, 1_000_000, None);
        assert_eq!(anonymous.len(), 1, "the per-subject rule counts nothing without a subject");
    }

    #[test]
    fn rules_written_alike_share_one_shape_which_places_a_calendar_window_again_once_it_ends() {
        let (a, b) = (
            rule(Scope::Customer(CustomerId::new_v4()), Measure::Cost, DAY, false, 5_000),
            rule(Scope::Customer(CustomerId::new_v4()), Measure::Cost, DAY, false, 7_000),
        );
        assert!(std::ptr::eq(a.shape(), b.shape()), "one shape");
        let plan = rule(Scope::Plan(PlanId::new_v4()), Measure::Cost, DAY, false, 5_000);
        assert!(!std::ptr::eq(a.shape(), plan.shape()), "a plan's rule ranks apart");
        let day_ms = 86_400_000;
        let today = a.shape().placed(1_000 * day_ms + 5, None);
        assert_eq!((today.since_ms, today.resets_ms), (1_000 * day_ms, Some(1_001 * day_ms)));
        assert_eq!(b.shape().placed(1_001 * day_ms - 1, None), today, "the kept placement, to its last ms");
        let tomorrow = b.shape().placed(1_001 * day_ms, None);
        assert_eq!((tomorrow.since_ms, tomorrow.resets_ms), (1_001 * day_ms, Some(1_002 * day_ms)));
        let yesterday = a.shape().placed(1_000 * day_ms - 1, None);
        assert_eq!(yesterday.since_ms, 999 * day_ms, "an earlier instant is placed, not given the kept one");
    }
}
