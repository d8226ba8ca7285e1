//! The OpenAPI document, generated from the handlers, and its offline docs page.

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::SwaggerUi;

use super::{admin, audit, check, events, health, meta, outbox, webhooks};
use crate::error::{FieldError, Problem};

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
        outbox::list,
        outbox::retry_one,
        outbox::retry_all,
        outbox::stats,
        admin::show_customer,
        admin::list_limits,
        admin::create_limit,
        admin::delete_limit,
        audit::list,
        webhooks::billabear
    ),
    components(schemas(Problem, FieldError)),
    modifiers(&BearerAuth),
    tags(
        (name = "check", description = "May a customer keep using the product? (scope check)"),
        (name = "events", description = "Usage events in, stored before acknowledged (scope events)"),
        (name = "admin", description = "Operators (scope admin)"),
        (name = "webhooks", description = "BillaBear's webhooks (the secret is in the URL)"),
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

/// `/openapi.json` and the Swagger UI at `/docs/` (its assets are vendored: no CDN needed).
pub fn docs() -> SwaggerUi {
    SwaggerUi::new("/docs/{_:.*}").url("/openapi.json", ApiDoc::openapi())
}
