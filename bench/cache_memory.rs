//! Memory of the snapshot cache with N customers (default 1,000,000), each with a WARNING and a
//! DISABLE limit, measured as the process's RSS. `--naive` fills a cache of String-keyed,
//! String-fielded snapshots instead: the baseline, run as a separate process. `--plan` gives
//! every customer a plan of 3 features and 2 feature limits (`entitlements::Plan`), to set
//! beside the run without one.
//!
//!   cargo run --release --example cache-memory -- 1000000
//!   cargo run --release --example cache-memory -- 1000000 --plan
//!   cargo run --release --example cache-memory -- 1000000 --naive
//!   cargo run --release --example cache-memory -- 1000000 --rules
//!
//! `--rules` also gives every customer one rule of its own ("$50 a day"), held as a replica's
//! copy of the rules holds them (`rules::Rulebook`: a map from customer to its own rules), to
//! set beside the run without it.

use std::sync::Arc;
use std::time::SystemTime;

use secrecy::SecretString;
use usage_gate::billabear::BillaBearClient;
use usage_gate::cache::SnapshotCache;
use usage_gate::config::{KeySettings, Settings};
use usage_gate::domain::Currency;
use usage_gate::domain::{CustomerId, CustomerStatus, LimitAction, LimitId, SubscriptionId};
use usage_gate::entitlements::{Period, Plan};
use usage_gate::policy::Limit;
use usage_gate::projection::{Aggregation, Code, Metered};
use usage_gate::snapshot::{Known, SnapshotData};
use uuid::Uuid;

/// The system allocator, counted: RSS moves by a third between runs of the same fill (moka's
/// housekeeping, the allocator's arenas), so a change of a few percent shows only in the bytes
/// the heap holds.
#[global_allocator]
static HEAP: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

/// What a straightforward implementation would cache: JSON-shaped, String everywhere.
#[allow(dead_code)]
struct NaiveSnapshot {
    customer_id: String,
    status: String,
    estimate: i64,
    currency: String,
    limits: Vec<NaiveLimit>,
    fetched_at: SystemTime,
}

#[allow(dead_code)]
struct NaiveLimit {
    id: String,
    amount: i64,
    action: String,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: u64 = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let naive = args.iter().any(|a| a == "--naive");
    let plan = args.iter().any(|a| a == "--plan");
    let rules = args.iter().any(|a| a == "--rules");
    let base = rss_mib();
    let heap = stats_alloc::Region::new(HEAP);
    let (entries, _cache) = if naive { fill_naive(n) } else { fill_compact(n, plan) };
    let _rules = rules.then(|| fill_rules(n));
    let rss = rss_mib();
    let change = heap.change();
    let held =
        change.bytes_allocated as f64 - change.bytes_deallocated as f64 + change.bytes_reallocated as f64;
    let kind = match (naive, plan, rules) {
        (true, ..) => "naive (String keys and fields)",
        (false, true, _) => "usage-gate SnapshotCache, 3 features and 2 feature limits each",
        (false, false, true) => "usage-gate SnapshotCache and one rule each in the rules' copy",
        (false, false, false) => "usage-gate SnapshotCache",
    };
    println!(
        "{kind}: {entries} customers cached, RSS {rss:.0} MiB ({:.0} MiB over the empty process, {:.0} bytes per customer); heap held {:.0} bytes per customer",
        rss - base,
        (rss - base) * 1024.0 * 1024.0 / entries.max(1) as f64,
        held / entries.max(1) as f64
    );
}

/// The cache filled, and how many it holds; kept alive until measured.
fn fill_compact(n: u64, with_plan: bool) -> (u64, Box<dyn std::any::Any>) {
    let mut raw = Settings::defaults();
    raw.billabear.api_key = SecretString::from("unused");
    raw.cache.max_customers = n;
    raw.auth.keys = vec![KeySettings {
        name: "bench".into(),
        key: Some(SecretString::from("bench-key-0123456789")),
        sha256: None,
        scopes: vec!["check".into()],
    }];
    let settings = raw.validate().expect("valid settings");
    let cache = SnapshotCache::new(BillaBearClient::new(&settings.billabear).unwrap(), &settings.cache);
    // Every customer has one usage-priced subscription (what pending usage is priced by).
    let code = Code::intern("api_calls");
    for i in 0..n {
        let limits = vec![
            Limit {
                id: LimitId::from(Uuid::from_u128(i as u128 | 1 << 64)),
                amount: 5000,
                action: LimitAction::Warning,
            },
            Limit {
                id: LimitId::from(Uuid::from_u128(i as u128 | 2 << 64)),
                amount: 10000,
                action: LimitAction::Disable,
            },
        ];
        let known = Known {
            status: CustomerStatus::Active,
            estimate: (i % 20_000) as i64,
            currency: Currency::parse("USD"),
            limits: limits.into_boxed_slice(),
            metered: Box::new([Metered {
                subscription: SubscriptionId::from(Uuid::from_u128(i as u128 | 3 << 64)),
                usage: (i % 20_000) as f64,
                per_unit: 1.0,
                code,
                aggregation: Aggregation::Sum,
                marginal: false,
                approximate: false,
                takes_customer_events: true,
            }]),
            // Each customer's own plan, made from BillaBear's lists as a fetch makes it.
            plan: if with_plan {
                Plan::new([("projects", 25), ("api_calls", 10_000)], ["sso", "audit_log", "webhooks"], 10, [])
            } else {
                Plan::default()
            },
            // Each customer's billing period, as a fetch reads it from its subscriptions.
            period: with_plan.then_some(Period::new(1_800_000_000 + i as i64, 1_802_592_000 + i as i64)),
        };
        cache.insert(CustomerId::from(Uuid::from_u128(i as u128)), SnapshotData::Known(known));
    }
    (cache.len(), Box::new(cache))
}

/// One rule per customer, "$50 a day" in Paris, in the shape of the rules' copy.
fn fill_rules(n: u64) -> Box<dyn std::any::Any> {
    use usage_gate::entitlements::{TimeZone, Window};
    use usage_gate::judgement::rule::{DEFAULT_THRESHOLDS, Measure, Mode, Rule, RuleSpec, RuleWindow, Scope};
    use usage_gate::rules::Owner;
    let copy: dashmap::DashMap<Owner, Arc<[Rule]>, foldhash::fast::RandomState> = dashmap::DashMap::default();
    let paris = TimeZone("Europe/Paris".parse().unwrap());
    for i in 0..n {
        let customer = CustomerId::from(Uuid::from_u128(i as u128));
        let spec = RuleSpec {
            scope: Scope::Customer(customer),
            measure: Measure::Cost,
            limit: 5000,
            window: RuleWindow::Calendar { unit: Window::Day, zone: paris },
            mode: Mode::Hard,
            per_subject: false,
            subject_limits: Default::default(),
            thresholds: DEFAULT_THRESHOLDS.to_vec(),
        };
        let rule = Rule::new(Uuid::from_u128(i as u128 | 4 << 64), &spec);
        copy.insert(Owner(customer), Arc::new([rule]));
    }
    Box::new(copy)
}

fn fill_naive(n: u64) -> (u64, Box<dyn std::any::Any>) {
    let cache: moka::sync::Cache<String, Arc<NaiveSnapshot>> =
        moka::sync::Cache::builder().max_capacity(n).build();
    for i in 0..n {
        let id = Uuid::from_u128(i as u128).to_string();
        let limits = vec![
            NaiveLimit {
                id: Uuid::from_u128(i as u128 | 1 << 64).to_string(),
                amount: 5000,
                action: "WARNING".into(),
            },
            NaiveLimit {
                id: Uuid::from_u128(i as u128 | 2 << 64).to_string(),
                amount: 10000,
                action: "DISABLE".into(),
            },
        ];
        let snapshot = NaiveSnapshot {
            customer_id: id.clone(),
            status: "active".into(),
            estimate: (i % 20_000) as i64,
            currency: "USD".into(),
            limits,
            fetched_at: SystemTime::now(),
        };
        cache.insert(id, Arc::new(snapshot));
    }
    cache.run_pending_tasks();
    (cache.entry_count(), Box::new(cache))
}
