//! API keys: 401 without a valid key, 403 without the route's scope, the key's name as actor.

use actix_web::test as actix_test;
use actix_web::{App, HttpResponse, web};
use serde_json::{Value, json};
use usage_gate::auth::{Caller, Scope};
use usage_gate::routes::auth::Authorize;

use crate::helpers::*;

#[tokio::test]
async fn whoami_names_the_key_and_its_scopes() {
    let app = TestApp::spawn().await;
    let response = app.get("/v1/whoami", Some(CHECK_KEY)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(response.json::<Value>().await.unwrap(), json!({"name": "checker", "scopes": ["check"]}));
}

#[tokio::test]
async fn no_key_a_wrong_key_or_another_scheme_is_401() {
    let app = TestApp::spawn().await;
    let cases: [(&str, Option<String>); 5] = [
        ("none", None),
        ("unknown", Some(format!("Bearer {ALL_KEY}x"))),
        ("empty", Some("Bearer ".into())),
        ("basic", Some(format!("Basic {ALL_KEY}"))),
        ("bare", Some(ALL_KEY.into())),
    ];
    for (case, header) in cases {
        let mut request = app.http.get(app.url("/v1/whoami"));
        if let Some(header) = header {
            request = request.header("Authorization", header);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.headers()["www-authenticate"], "Bearer", "{case}");
        assert_problem(response, 401, "unauthorized").await;
    }
    // The scheme is case-insensitive.
    let response = app
        .http
        .get(app.url("/v1/whoami"))
        .header("Authorization", format!("bearer {ALL_KEY}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
}

/// The scope check itself, on a route group that needs `admin` (the real routes that use it
/// arrive with the check, events and admin features; their tests cover the full matrix).
#[actix_web::test]
async fn a_key_without_the_route_scope_is_403() {
    let settings = test_settings("http://127.0.0.1:1/api/v1", "postgres://unused/db").validate().unwrap();
    let app = actix_test::init_service(
        App::new().app_data(web::Data::new(settings.auth.api_keys())).service(
            web::resource("/admin-only")
                .wrap(Authorize { route: "/admin-only", scope: Some(Scope::Admin), gate: false })
                .route(
                    web::get()
                        .to(|caller: Caller| async move { HttpResponse::Ok().body(caller.name.to_string()) }),
                ),
        ),
    )
    .await;
    let call = |key: &str| {
        actix_test::TestRequest::get()
            .uri("/admin-only")
            .insert_header(("Authorization", format!("Bearer {key}")))
            .to_request()
    };

    let denied = actix_test::call_service(&app, call(CHECK_KEY)).await;
    assert_eq!(denied.status(), 403);
    let body: Value = actix_test::read_body_json(denied).await;
    assert_eq!(body["code"], "forbidden");
    assert!(body["detail"].as_str().unwrap().contains("admin"));

    let allowed = actix_test::call_service(&app, call(ADMIN_KEY)).await;
    assert_eq!(allowed.status(), 200);
    assert_eq!(actix_test::read_body(allowed).await, "operator");

    let anonymous =
        actix_test::call_service(&app, actix_test::TestRequest::get().uri("/admin-only").to_request()).await;
    assert_eq!(anonymous.status(), 401, "no key is 401 before the scope is looked at");
}

#[test]
fn keys_never_appear_in_the_settings_debug_output() {
    let settings = test_settings("http://127.0.0.1:1/api/v1", "postgres://u:dbpass@h/db").validate().unwrap();
    let shown = format!("{settings:?}");
    for secret in [CHECK_KEY, ADMIN_KEY, SIM_KEY, "dbpass"] {
        assert!(!shown.contains(secret), "{secret} appears in {shown}");
    }
}
