//! The OpenAPI 3 document, generated from the handlers' annotations: routes are registered
//! through it, so a route cannot exist undocumented, nor a documented one not exist.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::{AppState, orders, users};

#[derive(OpenApi)]
#[openapi(
    info(title = "shop command API", description = "Commands of the event-sourced shop. Errors are application/problem+json (RFC 9457)."),
    modifiers(&BearerAuth),
    tags((name = "users"), (name = "orders"))
)]
struct ApiDoc;

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

/// Every command route, with its documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::register))
        .routes(routes!(users::change_email))
        .routes(routes!(users::deactivate))
        .routes(routes!(orders::place))
        .routes(routes!(orders::cancel))
}

/// `GET /openapi.json`, open without an API key.
pub fn document_route(document: Arc<utoipa::openapi::OpenApi>) -> Router {
    Router::new().route(
        "/openapi.json",
        get(move || {
            let document = Arc::clone(&document);
            async move { axum::Json(document.as_ref().clone()) }
        }),
    )
}
