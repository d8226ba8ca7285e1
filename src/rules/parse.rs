//! A rule as the API and the console write it, read into a [`NewRule`] or a [`RulePatch`],
//! naming every invalid field (`scope.customer`, `window.time_zone`, `subject_limits.alice`).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use crate::domain::{CustomerId, FieldError, FromText, MetricCode, PlanId, Subject, whole_number};
use crate::entitlements::{TimeZone, Window};
use crate::judgement::rule::{
    DEFAULT_THRESHOLDS, MAX_ROLLING_S, MAX_THRESHOLD, Measure, Mode, RuleSpec, RuleWindow, Scope,
};

/// A rule to create: what it is, and why (for people).
#[derive(Debug, Clone, PartialEq)]
pub struct NewRule {
    pub spec: RuleSpec,
    pub description: Option<String>,
}

/// What a rule's change sets (none: left as it is). `description: Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RulePatch {
    pub limit: Option<i64>,
    pub mode: Option<Mode>,
    pub thresholds: Option<Vec<u16>>,
    pub subject_limits: Option<BTreeMap<Subject, i64>>,
    pub description: Option<Option<String>>,
}

const MAX_DESCRIPTION_CHARS: usize = 500;

const FIELDS: [&str; 9] = [
    "scope",
    "measure",
    "limit",
    "window",
    "mode",
    "per_subject",
    "subject_limits",
    "thresholds",
    "description",
];

/// What a change may set; the rest makes another rule (delete this one and create it).
const CHANGEABLE: [&str; 5] = ["limit", "mode", "thresholds", "subject_limits", "description"];

/// The console's form for a rule, its boxes as typed.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleForm<'a> {
    /// `customer`, `plan` or `all`, with the customer's or the plan's id.
    pub scope: &'a str,
    pub scope_id: &'a str,
    /// `cost` or `metric`, with the metric's code.
    pub measure: &'a str,
    pub metric: &'a str,
    pub limit: &'a str,
    /// `hour`, `day`, `week`, `month` (in `time_zone`), `rolling` (`rolling_s`) or `billing_period`.
    pub window: &'a str,
    pub time_zone: &'a str,
    pub rolling_s: &'a str,
    pub mode: &'a str,
    pub per_subject: bool,
    /// Percents, separated by commas; empty: the default ladder.
    pub thresholds: &'a str,
    pub description: &'a str,
}

impl NewRule {
    /// The console's form, named as the API's fields are.
    pub fn from_form(form: &RuleForm) -> Result<Self, Vec<FieldError>> {
        use crate::domain::form_number;
        let scope = match form.scope {
            "all" => json!({"all": true}),
            kind => json!({ kind: form.scope_id }),
        };
        let measure = match form.measure {
            "metric" => json!({"metric": form.metric}),
            kind => json!({ kind: {} }),
        };
        let window = match form.window {
            "rolling" => json!({"rolling_s": form_number(form.rolling_s)}),
            "billing_period" => json!({"billing_period": {}}),
            unit if form.time_zone.is_empty() => json!({"calendar": unit}),
            unit => json!({"calendar": unit, "time_zone": form.time_zone}),
        };
        let mut body = json!({"scope": scope, "measure": measure, "limit": form_number(form.limit),
                              "window": window, "mode": form.mode, "per_subject": form.per_subject});
        if !form.thresholds.is_empty() {
            body["thresholds"] = form.thresholds.split(',').map(|t| form_number(t.trim())).collect();
        }
        if !form.description.is_empty() {
            body["description"] = json!(form.description);
        }
        Self::from_json(&body)
    }

    pub fn from_json(body: &Value) -> Result<Self, Vec<FieldError>> {
        let object = as_object(body)?;
        let mut errors = unknown_fields(object, &FIELDS);
        let field = |name: &str| object.get(name).filter(|v| !v.is_null());
        let scope = required(field("scope"), "scope", &mut errors, scope);
        let measure = required(field("measure"), "measure", &mut errors, measure);
        let limit = required(field("limit"), "limit", &mut errors, |v| positive(v, "limit"));
        let window = required(field("window"), "window", &mut errors, window);
        let mode = required(field("mode"), "mode", &mut errors, mode);
        let per_subject = match field("per_subject").map(|v| v.as_bool().ok_or(())) {
            None => false,
            Some(Ok(per_subject)) => per_subject,
            Some(Err(())) => {
                errors.push(FieldError::new("per_subject", "must be true or false"));
                false
            }
        };
        let subject_limits = match field("subject_limits") {
            None => BTreeMap::new(),
            Some(v) => collect(subject_limits(v), &mut errors).unwrap_or_default(),
        };
        // An empty map limits no subject: it fits any rule.
        if !per_subject && !subject_limits.is_empty() {
            errors.push(FieldError::new("subject_limits", "only with \"per_subject\": true"));
        }
        let thresholds = match field("thresholds") {
            None => DEFAULT_THRESHOLDS.to_vec(),
            Some(v) => collect(thresholds(v), &mut errors).unwrap_or_default(),
        };
        let description = field("description").and_then(|v| collect(description(v), &mut errors));
        match (scope, measure, limit, window, mode) {
            (Some(scope), Some(measure), Some(limit), Some(window), Some(mode)) if errors.is_empty() => {
                let spec =
                    RuleSpec { scope, measure, limit, window, mode, per_subject, subject_limits, thresholds };
                Ok(NewRule { spec, description })
            }
            _ => Err(errors),
        }
    }
}

impl RulePatch {
    /// A change of a rule (whether the rule may take `subject_limits` is the rule's to say).
    pub fn from_json(body: &Value) -> Result<Self, Vec<FieldError>> {
        let object = as_object(body)?;
        let mut errors: Vec<FieldError> = object
            .keys()
            .filter(|k| !CHANGEABLE.contains(&k.as_str()))
            .map(|k| match FIELDS.contains(&k.as_str()) {
                true => FieldError::new(k, "cannot be changed: create another rule and delete this one"),
                false => {
                    FieldError::new(k, format!("unknown field: a change sets {}", CHANGEABLE.join(", ")))
                }
            })
            .collect();
        let field = |name: &str| object.get(name);
        let mut patch = RulePatch::default();
        if let Some(v) = field("limit") {
            patch.limit = collect(positive(v, "limit"), &mut errors);
        }
        if let Some(v) = field("mode") {
            patch.mode = collect(mode(v), &mut errors);
        }
        if let Some(v) = field("thresholds") {
            patch.thresholds = collect(thresholds(v), &mut errors);
        }
        if let Some(v) = field("subject_limits") {
            patch.subject_limits = collect(subject_limits(v), &mut errors);
        }
        if let Some(v) = field("description") {
            patch.description = match v {
                Value::Null => Some(None),
                v => collect(description(v), &mut errors).map(Some),
            };
        }
        if object.is_empty() {
            errors.push(FieldError::new(
                "body",
                format!("sets nothing: a change sets {}", CHANGEABLE.join(", ")),
            ));
        }
        if errors.is_empty() { Ok(patch) } else { Err(errors) }
    }
}

fn as_object(body: &Value) -> Result<&Map<String, Value>, Vec<FieldError>> {
    body.as_object().ok_or_else(|| vec![FieldError::new("body", "must be a JSON object")])
}

fn unknown_fields(object: &Map<String, Value>, known: &[&str]) -> Vec<FieldError> {
    object
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| FieldError::new(k, "unknown field"))
        .collect()
}

type Parsed<T> = Result<T, Vec<FieldError>>;

fn required<T>(
    value: Option<&Value>,
    name: &str,
    errors: &mut Vec<FieldError>,
    parse: impl FnOnce(&Value) -> Parsed<T>,
) -> Option<T> {
    match value {
        None => {
            errors.push(FieldError::new(name, "required"));
            None
        }
        Some(v) => collect(parse(v), errors),
    }
}

fn collect<T>(parsed: Parsed<T>, errors: &mut Vec<FieldError>) -> Option<T> {
    parsed.map_err(|e| errors.extend(e)).ok()
}

fn fail<T>(field: impl Into<String>, message: impl Into<String>) -> Parsed<T> {
    Err(vec![FieldError::new(field, message)])
}

/// The one key of an object such as `{"customer": ID}`, with its value.
fn one_key<'a>(value: &'a Value, name: &str, shapes: &str) -> Parsed<(&'a str, &'a Value)> {
    match value.as_object() {
        Some(object) if object.len() == 1 => {
            let (key, value) = object.iter().next().expect("one key");
            Ok((key.as_str(), value))
        }
        _ => fail(name, format!("must be one of {shapes}")),
    }
}

fn scope(value: &Value) -> Parsed<Scope> {
    const SHAPES: &str = "{\"customer\": ID}, {\"plan\": PLAN_ID}, {\"all\": true}";
    match one_key(value, "scope", SHAPES)? {
        ("customer", id) => match id.as_str().map(CustomerId::parse) {
            Some(Ok(id)) => Ok(Scope::Customer(id)),
            _ => fail("scope.customer", "must be a customer id (UUID)"),
        },
        ("plan", id) => match id.as_str().map(PlanId::parse) {
            Some(Ok(id)) => Ok(Scope::Plan(id)),
            _ => fail("scope.plan", "must be a BillaBear plan id (UUID)"),
        },
        ("all", Value::Bool(true)) => Ok(Scope::All),
        ("all", _) => fail("scope.all", "must be true"),
        _ => fail("scope", format!("must be one of {SHAPES}")),
    }
}

fn measure(value: &Value) -> Parsed<Measure> {
    const SHAPES: &str = "{\"cost\": {}}, {\"metric\": CODE}";
    match one_key(value, "measure", SHAPES)? {
        ("cost", Value::Object(o)) if o.is_empty() => Ok(Measure::Cost),
        ("cost", _) => fail("measure.cost", "must be {}"),
        ("metric", code) => match code.as_str().map(MetricCode::parse) {
            Some(Ok(code)) => Ok(Measure::Metric(code)),
            Some(Err(e)) => fail("measure.metric", e.to_string()),
            None => fail("measure.metric", "must be a metric code"),
        },
        _ => fail("measure", format!("must be one of {SHAPES}")),
    }
}

fn positive(value: &Value, name: &str) -> Parsed<i64> {
    match whole_number(value).filter(|n| *n > 0) {
        Some(n) => Ok(n),
        None => fail(name, "must be a whole number more than 0"),
    }
}

fn window(value: &Value) -> Parsed<RuleWindow> {
    const SHAPES: &str = "{\"calendar\": \"hour\" | \"day\" | \"week\" | \"month\", \"time_zone\"?: IANA}, \
                          {\"rolling_s\": S}, {\"billing_period\": {}}";
    let Some(object) = value.as_object() else { return fail("window", format!("must be one of {SHAPES}")) };
    let zone = object.get("time_zone");
    let known = ["calendar", "time_zone", "rolling_s", "billing_period"];
    let mut errors: Vec<FieldError> = object
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .map(|k| FieldError::new(format!("window.{k}"), "unknown field"))
        .collect();
    let kinds: Vec<&str> =
        ["calendar", "rolling_s", "billing_period"].into_iter().filter(|k| object.contains_key(*k)).collect();
    let window = match kinds.as_slice() {
        ["calendar"] => {
            let unit = match object["calendar"].as_str().map(Window::from_text) {
                Some(Ok(unit)) if unit != Window::BillingPeriod => Some(unit),
                _ => {
                    errors.push(FieldError::new(
                        "window.calendar",
                        "must be \"hour\", \"day\", \"week\" or \"month\"",
                    ));
                    None
                }
            };
            let zone = match zone {
                None => Some(TimeZone(chrono_tz::Tz::UTC)),
                Some(z) => match z.as_str().map(TimeZone::from_text) {
                    Some(Ok(zone)) => Some(zone),
                    Some(Err(why)) => {
                        errors.push(FieldError::new("window.time_zone", why));
                        None
                    }
                    None => {
                        errors.push(FieldError::new("window.time_zone", "must be an IANA time zone name"));
                        None
                    }
                },
            };
            unit.zip(zone).map(|(unit, zone)| RuleWindow::Calendar { unit, zone })
        }
        ["rolling_s"] => {
            match whole_number(&object["rolling_s"]).filter(|s| (1..=i64::from(MAX_ROLLING_S)).contains(s)) {
                Some(seconds) => Some(RuleWindow::Rolling { seconds: seconds as u32 }),
                None => {
                    errors.push(FieldError::new(
                        "window.rolling_s",
                        "must be whole seconds from 1 to 2678400 (31 days)",
                    ));
                    None
                }
            }
        }
        ["billing_period"] => match &object["billing_period"] {
            Value::Object(o) if o.is_empty() => Some(RuleWindow::BillingPeriod),
            _ => {
                errors.push(FieldError::new("window.billing_period", "must be {}"));
                None
            }
        },
        _ => {
            errors.push(FieldError::new("window", format!("must be one of {SHAPES}")));
            None
        }
    };
    if zone.is_some() && kinds != ["calendar"] {
        errors.push(FieldError::new("window.time_zone", "only for a calendar window"));
    }
    match window {
        Some(window) if errors.is_empty() => Ok(window),
        _ => Err(errors),
    }
}

fn mode(value: &Value) -> Parsed<Mode> {
    match value.as_str().map(Mode::from_text) {
        Some(Ok(mode)) => Ok(mode),
        _ => fail("mode", "must be \"hard\" or \"soft\""),
    }
}

fn subject_limits(value: &Value) -> Parsed<BTreeMap<Subject, i64>> {
    let Some(object) = value.as_object() else {
        return fail("subject_limits", "must be an object of subject to limit");
    };
    let mut errors = Vec::new();
    let mut limits = BTreeMap::new();
    for (key, limit) in object {
        match Subject::parse(key) {
            Ok(subject) => {
                if let Some(limit) = collect(positive(limit, &format!("subject_limits.{key}")), &mut errors) {
                    limits.insert(subject, limit);
                }
            }
            Err(e) => errors.push(FieldError::new("subject_limits", format!("a subject {e}, got {key:?}"))),
        }
    }
    if errors.is_empty() { Ok(limits) } else { Err(errors) }
}

fn thresholds(value: &Value) -> Parsed<Vec<u16>> {
    let message = "must be percents of the limit from 1 to 1000, in ascending order, each once";
    let Some(items) = value.as_array() else { return fail("thresholds", message) };
    let percents: Option<Vec<u16>> = items
        .iter()
        .map(|v| whole_number(v).filter(|p| (1..=i64::from(MAX_THRESHOLD)).contains(p)).map(|p| p as u16))
        .collect();
    match percents {
        Some(p) if p.windows(2).all(|w| w[0] < w[1]) => Ok(p),
        _ => fail("thresholds", message),
    }
}

fn description(value: &Value) -> Parsed<String> {
    match value.as_str() {
        Some(d) if d.chars().count() > MAX_DESCRIPTION_CHARS => {
            fail("description", "must be at most 500 characters")
        }
        Some(d) if d.contains('\0') => fail("description", "must not contain the NUL character"),
        Some(d) => Ok(d.to_owned()),
        None => fail("description", "must be text"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn fields(body: Value) -> Vec<String> {
        NewRule::from_json(&body).unwrap_err().into_iter().map(|e| e.field).collect()
    }

    fn valid() -> Value {
        json!({"scope": {"customer": "11111111-1111-4111-8111-111111111111"}, "measure": {"cost": {}},
               "limit": 5000, "window": {"calendar": "day", "time_zone": "Europe/Paris"}, "mode": "hard"})
    }

    fn with(key: &str, value: Value) -> Value {
        let mut body = valid();
        body[key] = value;
        body
    }

    #[test]
    fn a_rule_reads_with_its_defaults() {
        let rule = NewRule::from_json(&valid()).unwrap().spec;
        assert_eq!(rule.scope.kind(), "customer");
        assert_eq!((rule.measure, rule.limit, rule.mode), (Measure::Cost, 5000, Mode::Hard));
        assert_eq!(
            rule.window,
            RuleWindow::Calendar { unit: Window::Day, zone: TimeZone(chrono_tz::Tz::Europe__Paris) }
        );
        assert_eq!((rule.per_subject, rule.thresholds), (false, vec![80, 100]));
        let per_member = json!({"scope": {"all": true}, "measure": {"metric": "api_calls"}, "limit": 10,
            "window": {"rolling_s": 60}, "mode": "soft", "per_subject": true,
            "subject_limits": {"alice": 20}, "thresholds": [50, 80, 100, 150], "description": "a member's calls"});
        let rule = NewRule::from_json(&per_member).unwrap().spec;
        assert_eq!(rule.window, RuleWindow::Rolling { seconds: 60 });
        assert_eq!(rule.subject_limits.get(&Subject::parse("alice").unwrap()), Some(&20));
        assert!(
            NewRule::from_json(&with("subject_limits", json!({}))).is_ok(),
            "no subject limited: any rule"
        );
        let billing = with("window", json!({"billing_period": {}}));
        assert_eq!(NewRule::from_json(&billing).unwrap().spec.window, RuleWindow::BillingPeriod);
        let utc = with("window", json!({"calendar": "hour"}));
        assert_eq!(
            NewRule::from_json(&utc).unwrap().spec.window,
            RuleWindow::Calendar { unit: Window::Hour, zone: TimeZone(chrono_tz::Tz::UTC) }
        );
    }

    #[test]
    fn every_invalid_field_is_named() {
        assert_eq!(fields(json!([])), ["body"]);
        assert_eq!(fields(json!({})), ["scope", "measure", "limit", "window", "mode"]);
        let cases: [(&str, Value, &str); 24] = [
            ("scope", json!({"team": "x"}), "scope"),
            ("scope", json!({"customer": "x", "plan": "y"}), "scope"),
            ("scope", json!({"customer": "not-a-uuid"}), "scope.customer"),
            ("scope", json!({"plan": 7}), "scope.plan"),
            ("scope", json!({"all": false}), "scope.all"),
            ("measure", json!({"tokens": {}}), "measure"),
            ("measure", json!({"cost": 1}), "measure.cost"),
            ("measure", json!({"metric": "API Calls"}), "measure.metric"),
            ("limit", json!(0), "limit"),
            ("limit", json!(-5), "limit"),
            ("limit", json!(1.5), "limit"),
            ("window", json!({"calendar": "fortnight"}), "window.calendar"),
            ("window", json!({"calendar": "billing_period"}), "window.calendar"),
            ("window", json!({"calendar": "day", "time_zone": "Mars/Olympus"}), "window.time_zone"),
            ("window", json!({"rolling_s": 0}), "window.rolling_s"),
            ("window", json!({"rolling_s": 2_678_401}), "window.rolling_s"),
            ("window", json!({"rolling_s": 60, "time_zone": "UTC"}), "window.time_zone"),
            ("window", json!({"rolling_s": 60, "calendar": "day"}), "window"),
            ("window", json!({}), "window"),
            ("mode", json!("strict"), "mode"),
            ("thresholds", json!([80, 50]), "thresholds"),
            ("thresholds", json!([0, 50]), "thresholds"),
            ("thresholds", json!([50, 1001]), "thresholds"),
            ("description", json!("x".repeat(501)), "description"),
        ];
        for (key, value, field) in cases {
            assert_eq!(fields(with(key, value.clone())), [field], "{key}: {value}");
        }
        assert_eq!(
            fields(with("subject_limits", json!({"alice": 5}))),
            ["subject_limits"],
            "without per_subject"
        );
        let mut per_subject = with("per_subject", json!(true));
        per_subject["subject_limits"] = json!({"alice": 0, "": 5, "bob smith": 5});
        let mut named = fields(per_subject);
        named.sort();
        assert_eq!(named, ["subject_limits", "subject_limits", "subject_limits.alice"]);
        assert_eq!(fields(with("colour", json!("red"))), ["colour"], "an unknown field is named");
    }

    #[test]
    fn a_change_sets_only_what_may_change() {
        let patch = RulePatch::from_json(&json!({"limit": 10, "mode": "soft", "description": null}));
        assert_eq!(
            patch.unwrap(),
            RulePatch {
                limit: Some(10),
                mode: Some(Mode::Soft),
                description: Some(None),
                ..Default::default()
            }
        );
        let named = |body: Value| -> Vec<String> {
            RulePatch::from_json(&body).unwrap_err().into_iter().map(|e| e.field).collect()
        };
        assert_eq!(named(json!({"scope": {"all": true}})), ["scope"]);
        assert_eq!(named(json!({"colour": 1})), ["colour"]);
        assert_eq!(named(json!({})), ["body"]);
        assert_eq!(named(json!({"limit": 0, "thresholds": [5, 5]})), ["limit", "thresholds"]);
        assert_eq!(named(json!({"subject_limits": {"alice": 0}})), ["subject_limits.alice"]);
        assert!(RulePatch::from_json(&json!({"subject_limits": {"alice": 5}})).is_ok());
    }
}
