//! What every service's OpenAPI document shares: the bearer scheme of the API keys, and
//! `GET /openapi.json`, open without a key. Each service registers its `/v1` routes through
//! `utoipa_axum`'s router, so a route cannot exist undocumented.

use std::sync::Arc;

use axum::Router;
use axum::routing::get;
use utoipa::Modify;
use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Response};

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
/// operations, schemas and tags together, under `info`. An operation (a path and method)
/// or an operation id two of them define, or a schema or tag two define differently, is an
/// error: the gateway routes an operation to one service, and a name means one thing.
pub fn merge(info: utoipa::openapi::Info, documents: Vec<OpenApi>) -> Result<OpenApi, String> {
    let json = |value: &dyn erased_serde::Serialize| value.to_json();
    let mut documents = documents.into_iter();
    let mut merged = documents.next().ok_or("no document to merge")?;
    for document in documents {
        clashes(&json(&merged), &json(&document))?;
        merged.merge(document);
    }
    // A tag two documents share (checked equal) is listed once.
    if let Some(tags) = merged.tags.as_mut() {
        let mut seen = std::collections::HashSet::new();
        tags.retain(|tag| seen.insert(tag.name.clone()));
    }
    merged.info = info;
    Ok(merged)
}

/// What `theirs` (a document, as JSON) defines that `known` defines too, or differently:
/// an operation, an operation id, a schema or response, a tag.
fn clashes(known: &serde_json::Value, theirs: &serde_json::Value) -> Result<(), String> {
    for (path, item) in theirs["paths"].as_object().into_iter().flatten() {
        for (method, _) in item.as_object().into_iter().flatten() {
            if known["paths"][path][method].is_object() {
                return Err(format!(
                    "{} {path} is in two documents",
                    method.to_uppercase()
                ));
            }
        }
    }
    let ids = |doc: &serde_json::Value| -> Vec<String> {
        doc["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .flat_map(|(_, item)| item.as_object().into_iter().flatten())
            .filter_map(|(_, op)| op["operationId"].as_str().map(str::to_owned))
            .collect()
    };
    let known_ids = ids(known);
    if let Some(id) = ids(theirs).into_iter().find(|id| known_ids.contains(id)) {
        return Err(format!("operation id {id} is in two documents"));
    }
    for (part, field) in [("schema", "schemas"), ("response", "responses")] {
        for (name, value) in theirs["components"][field]
            .as_object()
            .into_iter()
            .flatten()
        {
            let other = &known["components"][field][name];
            if !other.is_null() && other != value {
                return Err(format!("{part} {name} differs between two documents"));
            }
        }
    }
    for tag in theirs["tags"].as_array().into_iter().flatten() {
        let same_name = known["tags"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["name"] == tag["name"]);
        if same_name.is_some_and(|t| t != tag) {
            return Err(format!("tag {} differs between two documents", tag["name"]));
        }
    }
    Ok(())
}

/// JSON of anything serializable, for comparing parts of documents.
mod erased_serde {
    pub trait Serialize {
        fn to_json(&self) -> serde_json::Value;
    }

    impl<T: serde::Serialize> Serialize for T {
        fn to_json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}

/// A service's routes and the document of what they answer: the handlers' own documented
/// answers, and those every route can give whatever its handler (see [`shared_answers`]).
pub fn documented<S: Clone + Send + Sync + 'static>(
    routes: utoipa_axum::router::OpenApiRouter<S>,
) -> (Router<S>, OpenApi) {
    let (router, document) = routes.split_for_parts();
    (router, shared_answers(document))
}

/// The answers a route gives before or around its handler, added to each operation that
/// does not document them already, and the problem+json body of every error answer:
/// - 401 and 429 (the API-key gate) on an operation that asks for a key;
/// - 400, 413 and 415 (reading the body) on an operation that takes one;
/// - 503 on every operation: a service that is down, overloaded or cut from its broker or
///   database, as the service or the gateway in front of it says;
/// - every 4xx and 5xx answer is `application/problem+json` ([`crate::problem::Problem`]).
pub fn shared_answers(mut document: OpenApi) -> OpenApi {
    for item in document.paths.paths.values_mut() {
        let operations = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.options,
            &mut item.head,
            &mut item.patch,
            &mut item.trace,
        ];
        for operation in operations.into_iter().flatten() {
            let keyed = operation.security.as_ref().is_some_and(|s| !s.is_empty());
            let mut shared = vec![("503", "unavailable; retry (Retry-After)")];
            if keyed {
                shared.push(("401", "no valid API key"));
                shared.push(("429", "this API key is over its rate limit (Retry-After)"));
            }
            if operation.request_body.is_some() {
                shared.push(("400", "the body is not valid JSON"));
                shared.push(("413", "the body is over the size limit"));
                shared.push(("415", "the body is not application/json"));
            }
            let responses = &mut operation.responses.responses;
            for (status, description) in shared {
                responses
                    .entry(status.to_owned())
                    .or_insert_with(|| RefOr::T(Response::new(description)));
            }
            for (status, response) in responses.iter_mut() {
                if let (true, RefOr::T(response)) = (is_error(status), response) {
                    response.content.clear();
                    response.content.insert(
                        crate::problem::PROBLEM_JSON.to_owned(),
                        Content::new(Some(Ref::from_schema_name("Problem"))),
                    );
                }
            }
        }
    }
    document
        .components
        .get_or_insert_with(Default::default)
        .schemas
        .insert("Problem".to_owned(), RefOr::T(problem_schema()));
    document
}

fn is_error(status: &str) -> bool {
    status.starts_with('4') || status.starts_with('5')
}

/// RFC 9457 problem details, with the extension members the services add.
fn problem_schema() -> Schema {
    let text = || ObjectBuilder::new().schema_type(Type::String);
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(
            "RFC 9457 problem details. Extension members (`errors`, `request_id`, `current_version`, ...) sit beside the standard ones.",
        ))
        .property(
            "type",
            text().description(Some("`about:blank` or a `urn:shop:problem:...` type")),
        )
        .property("title", text())
        .property("status", ObjectBuilder::new().schema_type(Type::Integer))
        .property("detail", text())
        .property("request_id", text())
        .required("type")
        .required("title")
        .required("status")
        .additional_properties(Some(AdditionalProperties::FreeForm(true)))
        .into()
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
