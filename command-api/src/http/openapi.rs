//! The OpenAPI 3 document, generated from the handlers' annotations: routes are registered
//! through it, so a route cannot exist undocumented, nor a documented one not exist.

use service_runtime::openapi::BearerAuth;
use utoipa::OpenApi;
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

/// Every command route, with its documentation.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(users::register))
        .routes(routes!(users::change_email))
        .routes(routes!(users::deactivate))
        .routes(routes!(users::forget))
        .routes(routes!(orders::place))
        .routes(routes!(orders::cancel))
}
