//! The baseline for the check benchmark: a bare actix-web handler returning a fixed small body,
//! on the same route shape and worker count as usage-gate.
//!
//!   cargo run --release --example bare-actix -- 127.0.0.1:18081

use actix_web::{App, HttpResponse, HttpServer, web};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let address = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:18081".into());
    HttpServer::new(|| {
        App::new().route(
            "/v1/customers/{customer_id}/check",
            web::get().to(|| async {
                HttpResponse::Ok().content_type("application/json").body(r#"{"allowed":true,"status":"ok"}"#)
            }),
        )
    })
    .bind(address)?
    .run()
    .await
}
