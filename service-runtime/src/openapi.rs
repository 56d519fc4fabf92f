//! What every service's OpenAPI document shares: the bearer scheme of the API keys, and
//! `GET /openapi.json`, open without a key. Each service registers its `/v1` routes through
//! `utoipa_axum`'s router, so a route cannot exist undocumented.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

/// Declares the `bearer` security scheme the operations refer to.
#[derive(Debug)]
pub struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// `GET /openapi.json`, open without an API key.
pub fn document_route<S: Clone + Send + Sync + 'static>(document: OpenApi) -> Router<S> {
    let document = Arc::new(document);
    Router::new().route(
        "/openapi.json",
        get(move || {
            let document = Arc::clone(&document);
            async move { axum::Json(document.as_ref().clone()) }
        }),
    )
}
