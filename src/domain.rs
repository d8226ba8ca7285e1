//! Domain values that can only be built by parsing, so anything inside the core is already valid.
//!
//! Ids are BillaBear's UUIDs; keeping them as `Uuid` (16 bytes) rather than `String` matters for
//! a cache holding a million customers.

use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::str::FromStr;
use std::sync::{LazyLock, Mutex, PoisonError};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use uuid::Uuid;

/// Why a value could not be parsed; the message is shown to callers as the field's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    #[error("must be a UUID (e.g. 0b0f1f7e-2f3c-4a53-8b8e-8f8f3c7a1d22)")]
    NotUuid,
    #[error("must be between {min} and {max} characters")]
    Length { min: usize, max: usize },
    #[error("must match ^[a-z0-9_]+$ (BillaBear metric codes)")]
    MetricCode,
    #[error("must be WARNING or DISABLE")]
    LimitAction,
    #[error("must be a positive integer (minor units)")]
    NotPositive,
    #[error("must not contain the NUL character (\\u0000), which Postgres cannot store")]
    Nul,
    #[error("must be visible ASCII characters only (no spaces or control characters)")]
    NotVisible,
}

/// `TryFrom<String>` through the type's own `parse` (what serde's `try_from = "String"` calls).
macro_rules! try_from_string {
    ($name:ident) => {
        impl TryFrom<String> for $name {
            type Error = ParseError;
            fn try_from(s: String) -> Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }
    };
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(Uuid);

        impl Serialize for $name {
            // From a stack buffer: ids are in every check's answer.
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.0.hyphenated().encode_lower(&mut Uuid::encode_buffer()))
            }
        }

        impl $name {
            pub fn parse(s: &str) -> Result<Self, ParseError> {
                // Only the canonical hyphenated form: BillaBear's ids look like that, and it keeps
                // `{...}` or `urn:uuid:` spellings out of upstream URLs and cache keys.
                if s.len() != 36 {
                    return Err(ParseError::NotUuid);
                }
                Uuid::try_parse(s).map(Self).map_err(|_| ParseError::NotUuid)
            }

            pub fn new_v4() -> Self {
                Self(Uuid::new_v4())
            }

            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl From<Uuid> for $name {
            fn from(u: Uuid) -> Self {
                Self(u)
            }
        }

        impl FromStr for $name {
            type Err = ParseError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        try_from_string!($name);

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.to_string()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

/// What a string id keeps its text in: a `String`, or an `Arc<str>` for one cloned often.
trait Text: std::ops::Deref<Target = str> {
    fn into_string(self) -> String;
}

impl Text for String {
    fn into_string(self) -> String {
        self
    }
}

impl Text for std::sync::Arc<str> {
    fn into_string(self) -> String {
        self.to_string()
    }
}

/// A string id that can only be built by its type's own `parse` (which the type defines): the
/// wrapper, its serde form (parsed on the way in) and its text, kept in a `String` unless said.
macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident) => {
        string_id!($(#[$doc])* $name in String);
    };
    ($(#[$doc:meta])* $name:ident in $text:ty) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name($text);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        try_from_string!($name);

        impl From<$name> for String {
            fn from(id: $name) -> String {
                Text::into_string(id.0)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

uuid_id!(
    /// A BillaBear customer id.
    CustomerId
);
uuid_id!(
    /// A BillaBear usage-limit id.
    LimitId
);
uuid_id!(
    /// A BillaBear plan id (a subscription's `plan.id`).
    PlanId
);
uuid_id!(
    /// A BillaBear subscription id (what `POST /events` carries).
    SubscriptionId
);

string_id!(
    /// A client-chosen event id: BillaBear accepts any non-empty string up to its VARCHAR(255).
    EventId
);

impl EventId {
    pub const MAX_LEN: usize = 255;

    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(ParseError::Length { min: 1, max: Self::MAX_LEN });
        }
        if s.contains('\0') {
            return Err(ParseError::Nul);
        }
        Ok(Self(s.to_owned()))
    }
}

string_id!(
    /// Who inside a customer usage is for: a user, a workspace, an API key of the customer's
    /// (usage-gate's own rules can limit each separately). Shared, not copied: an answer names
    /// it in each per-subject rule it judged.
    Subject in std::sync::Arc<str>
);

impl Subject {
    pub const MAX_LEN: usize = 128;

    /// 1 to 128 visible ASCII characters.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(ParseError::Length { min: 1, max: Self::MAX_LEN });
        }
        if !s.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(ParseError::NotVisible);
        }
        Ok(Self(s.into()))
    }
}

string_id!(
    /// A BillaBear metric code (`^[a-z0-9_]+$`, as its admin UI enforces).
    MetricCode
);

impl MetricCode {
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        if s.is_empty() || s.len() > 255 {
            return Err(ParseError::Length { min: 1, max: 255 });
        }
        if !s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
            return Err(ParseError::MetricCode);
        }
        Ok(Self(s.to_owned()))
    }
}

/// What a usage limit does when the estimate goes over it. BillaBear's API names are the wire form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LimitAction {
    Warning,
    Disable,
}

impl LimitAction {
    /// Strict, as BillaBear is (`warning` is rejected upstream).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        match s {
            "WARNING" => Ok(Self::Warning),
            "DISABLE" => Ok(Self::Disable),
            _ => Err(ParseError::LimitAction),
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Warning => "WARNING",
            Self::Disable => "DISABLE",
        }
    }
}

impl fmt::Display for LimitAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An amount of money in integer minor units (cents), as BillaBear sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Money {
    pub amount: i64,
    /// ISO 4217 code; empty when BillaBear has no usage subscription to take it from.
    pub currency: String,
}

/// A customer's status as BillaBear reports it. Unknown strings are kept, not rejected, so a
/// BillaBear upgrade that adds a status does not break checks.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CustomerStatus {
    New,
    Active,
    Disabled,
    Churned,
    Reactivated,
    TrialActive,
    TrialEnded,
    Unknown,
    #[serde(untagged)]
    Other(String),
}

impl CustomerStatus {
    pub fn is_disabled(&self) -> bool {
        matches!(self, Self::Disabled)
    }

    /// The wire form (as serialized).
    pub fn as_str(&self) -> &str {
        match self {
            Self::New => "new",
            Self::Active => "active",
            Self::Disabled => "disabled",
            Self::Churned => "churned",
            Self::Reactivated => "reactivated",
            Self::TrialActive => "trial_active",
            Self::TrialEnded => "trial_ended",
            Self::Unknown => "unknown",
            Self::Other(status) => status,
        }
    }
}

/// A UTC instant in Unix milliseconds, serialized as RFC 3339 (`2026-11-27T13:38:06.237Z`).
/// Formatted by hand: chrono's general formatter was a visible share of a check's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The RFC 3339 text, in a fixed 24-byte buffer (years 1970 to 9999).
    pub fn rfc3339(self) -> [u8; 24] {
        let ms = self.0;
        let (days, in_day) = ((ms / 86_400_000) as i64, ms % 86_400_000);
        // Howard Hinnant's days-to-civil algorithm.
        let z = days + 719_468;
        let era = z.div_euclid(146_097);
        let doe = z.rem_euclid(146_097);
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
        let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
        let year = (yoe + era * 400 + i64::from(month <= 2)).clamp(0, 9999) as u64;
        let (h, m, s, milli) = (in_day / 3_600_000, in_day / 60_000 % 60, in_day / 1000 % 60, in_day % 1000);
        let mut out = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, value: u64, width: usize| {
            let mut v = value;
            for i in (0..width).rev() {
                out[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, year, 4);
        put(5, month, 2);
        put(8, day, 2);
        put(11, h, 2);
        put(14, m, 2);
        put(17, s, 2);
        put(20, milli, 3);
        out
    }
}

impl Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let text = self.rfc3339();
        s.serialize_str(std::str::from_utf8(&text).unwrap_or("1970-01-01T00:00:00.000Z"))
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.rfc3339()).unwrap_or("?"))
    }
}

/// A field that failed validation, with a message for a human: what every layer reports bad
/// input with, and what a 4xx body lists under `errors`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// Who a usage event is for: BillaBear's subscription id, or a customer whose active usage
/// subscription for the event's `code` is looked up at delivery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Subscription(SubscriptionId),
    Customer(CustomerId),
}

impl Target {
    /// The customer the target is: the one it names, or the subscription's owner as `owner`
    /// knows it (BillaBear has no lookup from a subscription to its customer).
    pub fn customer(self, owner: impl FnOnce(SubscriptionId) -> Option<CustomerId>) -> Option<CustomerId> {
        match self {
            Target::Customer(customer) => Some(customer),
            Target::Subscription(subscription) => owner(subscription),
        }
    }
}

/// An ISO 4217 code in three bytes; all zero when BillaBear sent none (no usage subscription).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Currency([u8; 3]);

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl Currency {
    pub fn parse(code: &str) -> Self {
        match code.as_bytes() {
            [a, b, c] if code.is_ascii() => Self([*a, *b, *c]),
            _ => Self::default(),
        }
    }

    pub fn as_str(&self) -> &str {
        if self.0 == [0; 3] { "" } else { std::str::from_utf8(&self.0).unwrap_or("") }
    }
}

/// An integer read from a JSON body, also when spelled with a zero fraction (`5000.0`, which
/// JSON Schema counts as an integer too).
pub fn whole_number(value: &serde_json::Value) -> Option<i64> {
    value.as_i64().or_else(|| {
        let f = value.as_f64()?;
        // Within 2^53, where every integer is exactly a double.
        (f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0).then_some(f as i64)
    })
}

/// Codes BillaBear lists (metrics, plan features) as small numbers: a million snapshots share a
/// few codes, and a check compares them as integers. Each code is kept once, for the life of
/// the process (BillaBear's codes are few); only what BillaBear lists is interned, a caller's
/// code is looked up ([`Interner::known`]), so callers cannot grow a table.
pub struct Interner(LazyLock<Mutex<Codes>>);

#[derive(Default)]
struct Codes {
    names: Vec<&'static str>,
    numbers: HashMap<&'static str, u32>,
}

impl Default for Interner {
    fn default() -> Self {
        Self::new()
    }
}

impl Interner {
    pub const fn new() -> Self {
        Self(LazyLock::new(Default::default))
    }

    fn codes(&self) -> std::sync::MutexGuard<'_, Codes> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The code's number, and whether this call interned it.
    pub fn intern_telling(&self, code: &str) -> (u32, bool) {
        let mut codes = self.codes();
        if let Some(known) = codes.numbers.get(code) {
            return (*known, false);
        }
        // Leaked once per distinct code, so it reads back as `&'static str` without a lock held.
        let name: &'static str = Box::leak(code.into());
        let next = codes.names.len() as u32;
        codes.names.push(name);
        codes.numbers.insert(name, next);
        (next, true)
    }

    /// The code's number, if it was interned.
    pub fn known(&self, code: &str) -> Option<u32> {
        self.codes().numbers.get(code).copied()
    }

    /// How many codes are interned.
    pub fn len(&self) -> usize {
        self.codes().names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The code numbered `number` (one this table gave).
    pub fn name(&self, number: u32) -> &'static str {
        self.codes().names[number as usize]
    }
}

/// `From<$row> for $body`, moving each named field. Naming them all keeps a row (a store's) and
/// an API body (a service's) apart at the cost of one list, and a field added to one and not the
/// other is a compile error.
macro_rules! moved_fields {
    ($row:ident => $body:ident { $($field:ident),+ $(,)? }) => {
        impl From<$row> for $body {
            fn from(row: $row) -> Self {
                let $row { $($field),+ } = row;
                Self { $($field),+ }
            }
        }
    };
}
pub(crate) use moved_fields;

/// A form's number field as the JSON a body would hold: an integer when it is one, otherwise
/// the text as typed (so the body's parser names the field), null when empty. The console's
/// forms go through the API's parsers this way.
pub fn form_number(raw: &str) -> serde_json::Value {
    match raw {
        "" => serde_json::Value::Null,
        raw => raw.parse::<i64>().map_or_else(|_| raw.into(), Into::into),
    }
}

/// A kind of value written as text (in a setting), with what the writer reads when the text is
/// not one.
pub trait FromText: Sized {
    fn from_text(text: &str) -> Result<Self, String>;
    /// Stands in for text that did not parse; never used, since validation then fails.
    fn stand_in() -> Self;
    /// The text this value is written as (for a value set in code).
    fn to_text(&self) -> String;
}

/// [`FromText`] for an enum written as one of a few words:
/// `written_as!(Mode { "enforce" => Enforce, "shadow" => Shadow })` reads "enforce" or "shadow",
/// and refuses anything else with "must be enforce or shadow, got …".
#[macro_export]
macro_rules! written_as {
    ($ty:ident { $($text:literal => $variant:ident),+ $(,)? }) => {
        impl $crate::domain::FromText for $ty {
            fn from_text(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(format!("must be {}, got {s:?}", $crate::domain::one_of(&[$($text),+]))),
                }
            }
            fn stand_in() -> Self {
                [$($ty::$variant),+][0]
            }
            fn to_text(&self) -> String {
                match self {
                    $($ty::$variant => $text.to_owned(),)+
                }
            }
        }
    };
}

/// "a", "a or b", "a, b or c".
pub fn one_of(words: &[&str]) -> String {
    match words {
        [] => String::new(),
        [one] => (*one).to_owned(),
        [rest @ .., last] => format!("{} or {last}", rest.join(", ")),
    }
}

/// A value parsed from its text when it is read (a setting, by serde). Text that does not parse
/// is kept with why, for the reader to report where it was written, beside every other problem:
/// `config`'s `validate` names the setting's key (a serde error would stop the load at the first).
#[derive(Clone)]
pub struct Parsed<T> {
    value: T,
    text: String,
    problem: Option<String>,
}

impl<T: FromText> Parsed<T> {
    pub fn new(text: impl Into<String>) -> Self {
        let text = text.into();
        match T::from_text(&text) {
            Ok(value) => Self { value, text, problem: None },
            Err(problem) => Self { value: T::stand_in(), text, problem: Some(problem) },
        }
    }
}

impl<T> Parsed<T> {
    /// As written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Why the text is not a value of its kind, if it is not.
    pub fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }
}

impl<T> Deref for Parsed<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: FromText> From<T> for Parsed<T> {
    fn from(value: T) -> Self {
        Self { text: value.to_text(), value, problem: None }
    }
}

impl<T: FromText> From<&str> for Parsed<T> {
    fn from(text: &str) -> Self {
        Self::new(text)
    }
}

impl<T: FromText> From<String> for Parsed<T> {
    fn from(text: String) -> Self {
        Self::new(text)
    }
}

impl<T: fmt::Debug> fmt::Debug for Parsed<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.value.fmt(f)
    }
}

impl<T: PartialEq> PartialEq for Parsed<T> {
    fn eq(&self, other: &Self) -> bool {
        self.value == other.value
    }
}

impl<T> Serialize for Parsed<T> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de, T: FromText> Deserialize<'de> for Parsed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_numbers_stay_as_typed_when_they_are_not_numbers() {
        use serde_json::{Value, json};
        assert_eq!(form_number("5000"), json!(5000));
        assert_eq!(form_number("5e3"), json!("5e3"));
        assert_eq!(form_number(""), Value::Null);
    }

    #[test]
    fn a_whole_number_may_be_spelled_with_a_zero_fraction() {
        use serde_json::json;
        for (value, want) in [
            (json!(5000), Some(5000)),
            (json!(5000.0), Some(5000)),
            (json!(-2.0), Some(-2)),
            (json!(0.5), None),
            (json!(1e300), None),
            (json!("5"), None),
        ] {
            assert_eq!(whole_number(&value), want, "{value}");
        }
    }

    #[test]
    fn currency_round_trips_and_empty_stays_empty() {
        assert_eq!(Currency::parse("USD").as_str(), "USD");
        assert_eq!(Currency::parse("").as_str(), "");
        assert_eq!(Currency::parse("EURO").as_str(), "");
    }

    #[test]
    fn customer_id_accepts_only_canonical_uuids() {
        let cases = [
            ("0b0f1f7e-2f3c-4a53-8b8e-8f8f3c7a1d22", true),
            ("0B0F1F7E-2F3C-4A53-8B8E-8F8F3C7A1D22", true),
            ("0b0f1f7e2f3c4a538b8e8f8f3c7a1d22", false),
            ("{0b0f1f7e-2f3c-4a53-8b8e-8f8f3c7a1d22}", false),
            ("urn:uuid:0b0f1f7e-2f3c-4a53-8b8e-8f8f3c7a1d22", false),
            ("../../admin", false),
            ("0b0f1f7e-2f3c-4a53-8b8e-8f8f3c7a1d2/", false),
            ("", false),
        ];
        for (input, ok) in cases {
            assert_eq!(CustomerId::parse(input).is_ok(), ok, "{input}");
        }
        let id = CustomerId::parse("0B0F1F7E-2F3C-4A53-8B8E-8F8F3C7A1D22").unwrap();
        assert_eq!(id.to_string(), "0b0f1f7e-2f3c-4a53-8b8e-8f8f3c7a1d22");
    }

    #[test]
    fn event_id_length_bounds() {
        assert!(EventId::parse("").is_err());
        assert!(EventId::parse(&"x".repeat(255)).is_ok());
        assert_eq!(EventId::parse(&"x".repeat(256)), Err(ParseError::Length { min: 1, max: 255 }));
    }

    #[test]
    fn metric_code_charset() {
        assert!(MetricCode::parse("api_calls_2").is_ok());
        assert_eq!(MetricCode::parse("API"), Err(ParseError::MetricCode));
        assert_eq!(MetricCode::parse("api-calls"), Err(ParseError::MetricCode));
        assert!(MetricCode::parse("").is_err());
    }

    #[test]
    fn limit_action_is_case_sensitive_like_billabear() {
        assert_eq!(LimitAction::parse("WARNING"), Ok(LimitAction::Warning));
        assert_eq!(LimitAction::parse("DISABLE"), Ok(LimitAction::Disable));
        assert_eq!(LimitAction::parse("warning"), Err(ParseError::LimitAction));
        assert_eq!(LimitAction::parse("WARN"), Err(ParseError::LimitAction));
    }

    #[test]
    fn timestamps_format_like_chrono() {
        for ms in [
            0u64,
            951_782_400_000,
            1_709_164_799_999,
            1_795_960_686_237,
            4_102_444_800_000,
            253_402_300_799_999,
        ] {
            let chrono = chrono::DateTime::from_timestamp_millis(ms as i64).unwrap();
            let expected = chrono.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
            assert_eq!(Timestamp(ms).to_string(), expected, "{ms}");
            assert_eq!(serde_json::to_string(&Timestamp(ms)).unwrap(), format!("\"{expected}\""));
        }
    }

    #[test]
    fn customer_status_keeps_unknown_values() {
        let s: CustomerStatus = serde_json::from_str("\"disabled\"").unwrap();
        assert!(s.is_disabled());
        let s: CustomerStatus = serde_json::from_str("\"paused\"").unwrap();
        assert_eq!(s, CustomerStatus::Other("paused".into()));
        assert_eq!(serde_json::to_string(&CustomerStatus::TrialActive).unwrap(), "\"trial_active\"");
    }
}
