//! The OpenAPI schemas of the core's types. The core (`domain`, `policy`, `snapshot`) knows no
//! HTTP or schema crate, so the schemas its types have in the document are written here, beside
//! the routes that answer with them, from the types' own wire names.

use std::borrow::Cow;

use utoipa::openapi::RefOr;
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::{PartialSchema, ToSchema};

use crate::auth::Scope;
use crate::domain::{FieldError, LimitAction};
use crate::policy::Status;
use crate::snapshot::Source;

/// A string enum's schema: its wire names, in order, and the type's doc line.
fn string_enum<'a>(names: impl IntoIterator<Item = &'a str>, description: Option<&str>) -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::String).enum_values(Some(names)).description(description).into()
}

/// Implements `ToSchema` under the type's own name, with `$schema` as its schema.
macro_rules! schema {
    ($type:ty, $name:literal, $schema:expr) => {
        impl PartialSchema for $type {
            fn schema() -> RefOr<Schema> {
                $schema
            }
        }

        impl ToSchema for $type {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
    };
}

schema!(Status, "Status", string_enum(Status::ALL.map(Status::as_str), None));
schema!(
    LimitAction,
    "LimitAction",
    string_enum(
        [LimitAction::Warning, LimitAction::Disable].map(|a| a.as_str()),
        Some(
            "What a usage limit does when the estimate goes over it. BillaBear's API names are the wire form."
        )
    )
);
schema!(
    Source,
    "Source",
    string_enum(
        [Source::Cache, Source::Upstream, Source::Stale, Source::Fallback].map(Source::as_str),
        Some("Where an answer's data came from.")
    )
);
schema!(
    FieldError,
    "FieldError",
    ObjectBuilder::new()
        .description(Some("A field that failed validation, with a message for a human."))
        .property("field", ObjectBuilder::new().schema_type(Type::String))
        .required("field")
        .property("message", ObjectBuilder::new().schema_type(Type::String))
        .required("message")
        .into()
);
schema!(
    Scope,
    "Scope",
    string_enum(
        Scope::ALL.map(|s| s.as_str()),
        Some("What a key may do. Health, metrics and docs need none.")
    )
);

// The fields `judgement::RuleJudged` serializes to (its `Serialize` is written by hand).
/// One of usage-gate's rules as judged for the answer: the rule as written, what it allows, what
/// was used in its window, and why it refuses or warns.
#[derive(ToSchema)]
#[allow(dead_code)] // read by the derive only
struct RuleViewFields {
    #[schema(format = Uuid)]
    id: String,
    /// `{"cost": {}}` (minor units) or `{"metric": CODE}` (units), as the rule is written.
    #[schema(value_type = Object)]
    measure: (),
    /// As the rule is written (`{"calendar": .., "time_zone": ..}`, `{"rolling_s": ..}`,
    /// `{"billing_period": {}}`).
    #[schema(value_type = Object)]
    window: (),
    /// `hard` or `soft`.
    mode: String,
    /// What it allows in its window (the subject's own limit, for a subject with one).
    limit: i64,
    /// Used in the window before what is asked (events, and on a write open holds too).
    used: f64,
    /// The subject a per-subject rule judged.
    subject: Option<String>,
    /// When a calendar or billing window ends and the count restarts (absent for a rolling
    /// window, which frees usage a sixtieth of its length at a time).
    #[schema(format = DateTime)]
    resets_at: Option<String>,
    /// Why it refuses (`rule_limit_exceeded`, `would_exceed_rule_limit`) or warns
    /// (`soft_limit_exceeded`); absent when what is asked fits.
    reason: Option<String>,
}

schema!(crate::judgement::RuleJudged, "RuleView", RuleViewFields::schema());
