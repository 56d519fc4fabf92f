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

/// One document of the services' `documents` (the gateway's `/openapi.json`): their
/// operations, schemas and tags together, titled `title`. An operation (a path and method)
/// two of them define, or a schema two define differently, is an error: the gateway routes
/// an operation to one service, and a schema means one thing.
pub fn merge(title: &str, documents: Vec<OpenApi>) -> Result<OpenApi, String> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    let as_json = |value: &dyn erased_json::Serialize| value.to_json();
    let mut documents = documents.into_iter();
    let mut merged = documents.next().ok_or("no document to merge")?;
    for document in documents {
        for (path, item) in &document.paths.paths {
            let Some(known) = merged.paths.paths.get(path) else {
                continue;
            };
            let (known, item) = (as_json(known), as_json(item));
            if let Some(method) = METHODS
                .iter()
                .find(|m| known.get(**m).is_some() && item.get(**m).is_some())
            {
                return Err(format!(
                    "{} {path} is in two documents",
                    method.to_uppercase()
                ));
            }
        }
        if let (Some(known), Some(theirs)) = (&merged.components, &document.components) {
            for (name, schema) in &theirs.schemas {
                if known
                    .schemas
                    .get(name)
                    .is_some_and(|k| as_json(k) != as_json(schema))
                {
                    return Err(format!("schema {name} differs between two documents"));
                }
            }
        }
        merged.merge(document);
    }
    merged.info.title = title.to_owned();
    merged.info.description = Some(
        "Every API of the shop behind its gateway: commands, queries (read models, dead letters) and sagas. Authorization: Bearer <API key>.".to_owned(),
    );
    Ok(merged)
}

/// JSON of anything serializable, for comparing parts of documents.
mod erased_json {
    pub trait Serialize {
        fn to_json(&self) -> serde_json::Value;
    }

    impl<T: serde::Serialize> Serialize for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
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
