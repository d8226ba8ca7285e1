//! The OpenAPI document, generated from the handlers, and its offline docs page.

use serde_json::json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{
    admin, audit, check, events, health, meta, outbox, overrides, reservations, rules, webhook_endpoints,
    webhooks,
};
use crate::domain::FieldError;
use crate::error::Problem;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "usage-gate",
        description = "Enforces BillaBear usage limits: cached checks, a durable event outbox, audited limit administration. \
                       Every route under /v1 needs `Authorization: Bearer KEY` with the route's scope."
    ),
    paths(
        health::healthz,
        health::readyz,
        meta::metrics,
        meta::whoami,
        check::check_customer,
        check::check_batch,
        check::gate,
        check::refresh,
        events::post_event,
        events::post_batch,
        events::post_billabear_event,
        reservations::create,
        reservations::commit,
        reservations::release,
        reservations::list,
        outbox::list,
        outbox::retry_one,
        outbox::retry_all,
        outbox::stats,
        admin::show_customer,
        admin::list_limits,
        admin::create_limit,
        admin::delete_limit,
        overrides::create,
        overrides::list_customer,
        overrides::list_all,
        overrides::end,
        rules::create_rule,
        rules::list_rules,
        rules::get_rule,
        rules::change_rule,
        rules::delete_rule,
        webhook_endpoints::create,
        webhook_endpoints::list,
        webhook_endpoints::show,
        webhook_endpoints::delete,
        webhook_endpoints::rotate_secret,
        webhook_endpoints::enable,
        webhook_endpoints::messages,
        webhook_endpoints::resend,
        audit::list,
        webhooks::billabear
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerAuth, &Contract),
    tags(
        (name = "check", description = "May a customer keep using the product? (scope check)"),
        (name = "events", description = "Usage events in, stored before acknowledged (scope events)"),
        (name = "reservations", description = "Holds for work whose cost comes later (scope events; listing: admin)"),
        (name = "admin", description = "Operators (scope admin)"),
        (name = "overrides", description = "Bounded exceptions to a customer's decision (scope admin)"),
        (name = "rules", description = "usage-gate's own limit rules: per window, per plan, per subject (scope admin)"),
        (name = "webhooks", description = "BillaBear's webhooks (the secret is in the URL)"),
        (name = "webhook-endpoints", description = "usage-gate's own signed webhooks: endpoints and messages (scope admin)"),
        (name = "health", description = "Liveness and readiness"),
        (name = "meta", description = "The service itself")
    )
)]
pub struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// What every route can answer besides its own statuses, and the event bodies' real shape, so
/// the document is a contract a client (or an API fuzzer) can hold usage-gate to.
struct Contract;

impl Modify for Contract {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for (path, item) in openapi.paths.paths.iter_mut() {
            let operations = [
                ("get", &mut item.get),
                ("post", &mut item.post),
                ("put", &mut item.put),
                ("delete", &mut item.delete),
                ("patch", &mut item.patch),
            ];
            for (method, operation) in operations {
                let Some(operation) = operation else { continue };
                if let Some(body) = request_body(method, path) {
                    operation.request_body = Some(from_json(body));
                }
                if let Some(answer) = created_answer(method, path) {
                    operation.responses.responses.insert("201".into(), from_json(answer));
                }
                let keyed = operation.security.as_ref().is_some_and(|s| !s.is_empty());
                let tagged = |tag: &str| operation.tags.as_ref().is_some_and(|t| t.iter().any(|t| t == tag));
                let mut statuses = vec![];
                if keyed {
                    statuses.push(("401", "No API key, or an unknown one"));
                    statuses.push(("403", "The API key lacks this route's scope"));
                }
                if operation.parameters.as_ref().is_some_and(|p| !p.is_empty())
                    || operation.request_body.is_some()
                {
                    statuses.push(("400", "Invalid input: every invalid field or parameter is named"));
                }
                if operation.request_body.is_some() {
                    statuses.push(("413", "The body is larger than server.max_body_bytes"));
                }
                if tagged("admin") || tagged("events") || tagged("reservations") || tagged("webhooks") {
                    statuses.push(("503", "Postgres unavailable: nothing was done, retry (Retry-After)"));
                }
                for (status, description) in statuses {
                    operation
                        .responses
                        .responses
                        .entry(status.into())
                        .or_insert_with(|| from_json(problem_response(description)));
                }
            }
        }
    }
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> T {
    serde_json::from_value(value).expect("a static OpenAPI fragment")
}

fn problem_response(description: &str) -> serde_json::Value {
    json!({"description": description,
           "content": {"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}}})
}

/// The body each route that reads its JSON by hand takes (to name every invalid field), as
/// `request_schemas` describes it.
fn request_body(method: &str, path: &str) -> Option<serde_json::Value> {
    let schema = match (method, path) {
        ("post", "/v1/events") => "NewEvent",
        ("post", "/v1/events/batch") => "NewEventBatch",
        ("post", "/api/v1/events") => "BillaBearEvent",
        ("post", "/v1/customers/{customer_id}/reservations") => "NewReservation",
        ("post", "/v1/reservations/{reservation_id}/commit") => "ReservationCommit",
        ("post", "/v1/customers/{customer_id}/overrides") => "NewOverride",
        ("post", "/v1/webhook-endpoints") => "NewWebhookEndpoint",
        ("post", "/v1/rules") => "NewRule",
        ("patch", "/v1/rules/{rule_id}") => "RulePatch",
        _ => return None,
    };
    Some(
        json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{schema}")}}}}),
    )
}

/// The 201 of a route whose answer is BillaBear's own object, passed on as BillaBear sent it.
fn created_answer(method: &str, path: &str) -> Option<serde_json::Value> {
    (method == "post" && path == "/v1/customers/{customer_id}/usage-limits").then(|| {
        json!({"description": "Created in BillaBear (Location: the limit); the next check reflects it",
               "content": {"application/json": {"schema": {"$ref": "#/components/schemas/UsageLimit"}}}})
    })
}

/// What `IncomingEvent::parse` accepts, as JSON Schema (added to the document as JSON: utoipa's
/// schema types cannot hold `oneOf` beside `properties`, or a list of types) (an event names its subscription or its
/// customer, never both); BillaBear's own route as BillaBear reads it.
fn event_schemas() -> [(&'static str, serde_json::Value); 4] {
    let event_id = json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[^\\u0000]+$",
                          "description": "The client's id for this usage; a repeat is a duplicate (same content) or a conflict"});
    let code = json!({"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[a-z0-9_]+$",
                      "description": "BillaBear metric code"});
    let value = json!({"type": "number", "description": "Units used (not a string)"});
    // Postgres stores no NUL in jsonb: not in any key or string, however deep.
    let no_nul = json!({"pattern": "^[^\\u0000]*$"});
    let json_without_nul = json!({"anyOf": [
        {"type": "string", "pattern": "^[^\\u0000]*$"},
        {"type": ["number", "boolean", "null"]},
        {"type": "array", "items": {"$ref": "#/components/schemas/JsonWithoutNul"}},
        {"type": "object", "propertyNames": no_nul, "additionalProperties": {"$ref": "#/components/schemas/JsonWithoutNul"}},
    ]});
    let properties = json!({"type": ["object", "null"], "propertyNames": no_nul,
                            "additionalProperties": {"$ref": "#/components/schemas/JsonWithoutNul"},
                            "description": "Metric filters and aggregation properties; no NUL in keys or strings"});
    let id = json!({"type": "string", "format": "uuid"});
    let subject = json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$",
                         "description": "Who inside the customer the usage is for (a user, a workspace, an API key): usage-gate's per-subject rules; stored, not sent to BillaBear"});
    let new_event = json!({
        "type": "object",
        "required": ["event_id", "code", "value"],
        "properties": {"event_id": event_id, "code": code, "value": value, "properties": properties,
                       "subscription": id, "customer": id, "subject": subject},
        "oneOf": [{"required": ["subscription"], "not": {"required": ["customer"]}},
                  {"required": ["customer"], "not": {"required": ["subscription"]}}],
    });
    let batch = json!({
        "type": "object",
        "required": ["events"],
        "properties": {"events": {"type": "array", "minItems": 1, "maxItems": 1000,
                                  "description": "Events as for POST /v1/events; an invalid one is answered `invalid` in its place",
                                  "items": {}}},
    });
    let billabear = json!({
        "type": "object",
        "required": ["event_id", "subscription", "code", "value"],
        "properties": {"event_id": event_id, "subscription": id, "code": code, "value": value,
                       "properties": {"anyOf": [properties, {"type": "array", "items": {"$ref": "#/components/schemas/JsonWithoutNul"}}]},
                       "customer": {"description": "Ignored, as BillaBear ignores it"}},
    });
    [
        ("NewEvent", new_event),
        ("NewEventBatch", batch),
        ("BillaBearEvent", billabear),
        ("JsonWithoutNul", json_without_nul),
    ]
}

/// What the hold, commit, override and webhook-endpoint routes read (`parse_hold`,
/// `overrides::parse_new`, `parse_endpoint`; commit's events are `NewEvent`s), and a usage limit
/// as BillaBear answers it, so that clients can take every request's type from the document.
fn request_schemas() -> [(&'static str, serde_json::Value); 7] {
    let minor_units = json!({"type": "integer", "format": "int64", "minimum": 0, "description": "Minor units of the customer's currency"});
    // null is taken as absent, so "present" in the two forms means present and not null.
    let given = |field: &str| json!({"required": [field], "properties": {field: {"not": {"type": "null"}}}});
    let reservation = json!({
        "type": "object",
        "description": "A hold of `amount`, or of what an event of `code` and `value` would cost now (a field that is null counts as absent)",
        "properties": {
            "amount": {"type": ["integer", "null"], "format": "int64", "minimum": 0, "description": "Minor units"},
            "code": {"type": ["string", "null"], "minLength": 1, "maxLength": 255, "pattern": "^[a-z0-9_]+$", "description": "BillaBear metric code (with value)"},
            "value": {"type": ["number", "null"], "minimum": 0, "description": "Units (with code)"},
            "ttl_ms": {"type": ["integer", "null"], "format": "int64", "minimum": 1, "maximum": 86_400_000, "description": "Default 60000"},
            "subject": {"type": ["string", "null"], "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$", "description": "Who inside the customer it is for: usage-gate's per-subject rules"},
        },
        "oneOf": [{"allOf": [given("amount")], "not": {"anyOf": [given("code"), given("value")]}},
                  {"allOf": [given("code"), given("value")], "not": given("amount")}],
    });
    let commit = json!({
        "type": "object",
        "required": ["events"],
        "properties": {"events": {"type": "array", "minItems": 0, "maxItems": 1000,
                                  "items": {"$ref": "#/components/schemas/NewEvent"},
                                  "description": "What the work used: the hold's customer's events"}},
    });
    let effect = json!({"type": "string", "enum": ["allow", "block", "raise"]});
    let new_override = json!({
        "type": "object",
        "required": ["effect", "reason", "expires_at"],
        "properties": {
            "effect": effect,
            "amount": {"type": "integer", "format": "int64", "minimum": 0, "description": "effect raise only (and required with it): the DISABLE threshold"},
            "reason": {"type": "string", "minLength": 1, "maxLength": 500, "pattern": "^[^\\u0000]*\\S[^\\u0000]*$"},
            "expires_at": {"type": "string", "format": "date-time", "description": "In the future, at most 90 days ahead"},
        },
    });
    let event_types: Vec<&str> = crate::webhooks::EventType::ALL.iter().map(|t| t.as_str()).collect();
    let endpoint = json!({
        "type": "object",
        "required": ["url"],
        "properties": {
            "url": {"type": "string", "format": "uri", "maxLength": 2048, "description": "An absolute http or https URL"},
            // null is taken as absent, as many clients send an unset field.
            "event_types": {"type": ["array", "null"], "minItems": 1, "items": {"type": "string", "enum": event_types}, "description": "Absent or null: all"},
            "description": {"type": ["string", "null"], "maxLength": 500, "pattern": "^[^\\u0000]*$", "description": "Absent or null: none"},
        },
    });
    let usage_limit = json!({
        "type": "object",
        "required": ["id", "amount", "action"],
        "properties": {"id": {"type": "string", "format": "uuid"}, "amount": minor_units,
                       "action": {"$ref": "#/components/schemas/LimitAction"}},
    });
    let [new_rule, rule_patch] = rule_schemas();
    [
        ("NewRule", new_rule),
        ("RulePatch", rule_patch),
        ("NewReservation", reservation),
        ("ReservationCommit", commit),
        ("NewOverride", new_override),
        ("NewWebhookEndpoint", endpoint),
        ("UsageLimit", usage_limit),
    ]
}

/// What `rules::NewRule::from_json` and `RulePatch::from_json` accept.
fn rule_schemas() -> [serde_json::Value; 2] {
    let uuid = json!({"type": "string", "format": "uuid"});
    // Every name the time-zone library knows, and only those.
    let zones: Vec<&str> = chrono_tz::TZ_VARIANTS.iter().map(|z| z.name()).collect();
    let scope = json!({"oneOf": [
        {"type": "object", "required": ["customer"], "additionalProperties": false, "properties": {"customer": uuid}},
        {"type": "object", "required": ["plan"], "additionalProperties": false, "properties": {"plan": uuid}},
        {"type": "object", "required": ["all"], "additionalProperties": false, "properties": {"all": {"const": true}}},
    ]});
    let empty = json!({"type": "object", "maxProperties": 0});
    let measure = json!({"oneOf": [
        {"type": "object", "required": ["cost"], "additionalProperties": false, "properties": {"cost": empty}},
        {"type": "object", "required": ["metric"], "additionalProperties": false,
         "properties": {"metric": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[a-z0-9_]+$"}}},
    ]});
    let window = json!({"oneOf": [
        {"type": "object", "required": ["calendar"], "additionalProperties": false, "properties": {
            "calendar": {"type": "string", "enum": ["hour", "day", "week", "month"]},
            "time_zone": {"type": "string", "enum": zones, "description": "IANA, default UTC"}}},
        {"type": "object", "required": ["rolling_s"], "additionalProperties": false,
         "properties": {"rolling_s": {"type": "integer", "minimum": 1, "maximum": 2_678_400}}},
        {"type": "object", "required": ["billing_period"], "additionalProperties": false, "properties": {"billing_period": empty}},
    ]});
    let limit = json!({"type": "integer", "format": "int64", "minimum": 1});
    let subject = json!({"type": "string", "minLength": 1, "maxLength": 128, "pattern": "^[!-~]+$"});
    let subject_limits = json!({"type": "object", "propertyNames": subject, "additionalProperties": limit,
                                "description": "A subject's own limit (per_subject rules only)"});
    let thresholds = json!({"type": "array", "items": {"type": "integer", "minimum": 1, "maximum": 1000},
                            "description": "Percents of the limit, ascending, each once; default [80, 100]"});
    // null counts as absent on a new rule.
    let or_null = |schema: &serde_json::Value| json!({"anyOf": [schema, {"type": "null"}]});
    let description = json!({"type": ["string", "null"], "maxLength": 500, "pattern": "^[^\\u0000]*$"});
    let mode = json!({"type": "string", "enum": ["hard", "soft"]});
    let new_rule = json!({
        "type": "object",
        "required": ["scope", "measure", "limit", "window", "mode"],
        "additionalProperties": false,
        "properties": {"scope": scope, "measure": measure, "limit": limit, "window": window, "mode": mode,
                       "per_subject": {"type": ["boolean", "null"], "description": "Default false"},
                       "subject_limits": or_null(&subject_limits), "thresholds": or_null(&thresholds),
                       "description": description},
        // Limits of subjects only on a rule that limits each subject.
        "if": {"required": ["subject_limits"], "properties": {"subject_limits": {"type": "object", "minProperties": 1}}},
        "then": {"required": ["per_subject"], "properties": {"per_subject": {"const": true}}},
    });
    let patch = json!({
        "type": "object",
        "minProperties": 1,
        "additionalProperties": false,
        "properties": {"limit": limit, "mode": mode, "thresholds": thresholds, "subject_limits": subject_limits,
                       "description": description},
    });
    [new_rule, patch]
}

/// `/openapi.json` and the Swagger UI at `/docs/` (its assets are vendored: no CDN needed).
pub fn docs() -> SwaggerUi {
    SwaggerUi::new("/docs/{_:.*}").external_url_unchecked("/openapi.json", document())
}

/// The OpenAPI document as served.
pub fn document() -> serde_json::Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).expect("the OpenAPI document serializes");
    for (name, schema) in event_schemas().into_iter().chain(request_schemas()) {
        document["components"]["schemas"][name] = schema;
    }
    // The listing passes BillaBear's limits on as they are (`LimitList` cannot name a schema
    // written as JSON).
    document["components"]["schemas"]["LimitList"]["properties"]["data"]["items"] =
        json!({"$ref": "#/components/schemas/UsageLimit"});
    document["webhooks"] = webhooks();
    document
}

/// What usage-gate POSTs to webhook endpoints for its rules' thresholds (docs/webhooks.md): the
/// body `{"type", "timestamp", "data"}`, signed by the Standard Webhooks spec.
fn webhooks() -> serde_json::Value {
    let uuid = json!({"type": "string", "format": "uuid"});
    let time = json!({"type": "string", "format": "date-time"});
    let subject = json!({"type": ["string", "null"], "description": "The subject of a per-subject rule; null for the whole customer"});
    let crossed = json!({
        "type": "object",
        "required": ["rule_id", "customer_id", "subject", "threshold", "used", "limit", "measure", "window", "window_start", "resets_at"],
        "properties": {
            "rule_id": uuid, "customer_id": uuid, "subject": subject,
            "threshold": {"type": "integer", "description": "Percent of the limit crossed"},
            "used": {"type": "number", "description": "Used in the window with the events that crossed it"},
            "limit": {"type": "integer", "format": "int64"},
            "measure": {"type": "object", "description": "As the rule is written: {\"cost\": {}} or {\"metric\": CODE}"},
            "window": {"type": "object", "description": "As the rule is written"},
            "window_start": time,
            "resets_at": {"type": ["string", "null"], "format": "date-time", "description": "The window's end; null for a rolling window"},
        },
    });
    let reset = json!({
        "type": "object",
        "required": ["rule_id", "customer_id", "subject", "limit", "thresholds", "window_start", "window_end"],
        "properties": {
            "rule_id": uuid, "customer_id": uuid, "subject": subject,
            "limit": {"type": "integer", "format": "int64"},
            "thresholds": {"type": "array", "items": {"type": "integer"}, "description": "The thresholds the window crossed"},
            "window_start": time, "window_end": time,
        },
    });
    let hook = |name: &str, summary: &str, data: serde_json::Value| {
        json!({"post": {
            "summary": summary,
            "requestBody": {"required": true, "content": {"application/json": {"schema": {
                "type": "object",
                "required": ["type", "timestamp", "data"],
                "properties": {"type": {"const": name}, "timestamp": time, "data": data},
            }}}},
            "responses": {"2XX": {"description": "Received; anything else is retried"}},
        }})
    };
    json!({
        "limit.threshold_crossed": hook("limit.threshold_crossed", "A rule's usage crossed one of its thresholds (once per rule, customer, subject, window and threshold)", crossed),
        "limit.window_reset": hook("limit.window_reset", "The window of a rule that crossed a threshold ended", reset),
    })
}
