//! Hostile input at every operation of every service, generated from the OpenAPI document
//! each service serves at `/openapi.json`: for every operation, callers without a valid
//! API key (none, a wrong one, another scheme, an empty one) and, with a valid key, every
//! path and query parameter and documented header set to strings chosen to break parsers,
//! an undocumented parameter, and request bodies derived from the documented schema with
//! each property dropped or replaced by a wrong type or a nasty value, plus bodies that are
//! not objects or not JSON. What must hold: no 5xx; every keyless request answered 401; and
//! nothing in the log carries the correlation id of a request that was refused.

use std::collections::{BTreeMap, HashSet};

use serde_json::{Value, json};
use system_tests::{create_topics, service_env, start_services};
use test_support::TestEnv;
use test_support::hostile::NASTY_STRINGS as NASTY;
use uuid::Uuid;

/// The operator key, which may call every operation (a client key stops at 403 on the
/// operators' actions before their parameters are read).
const KEY: &str = system_tests::OPERATOR_KEY;

/// One generated request.
#[derive(Debug)]
struct Case {
    method: reqwest::Method,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
    body: Option<Vec<u8>>,
    what: String,
}

/// A path segment, percent-encoded.
fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// `schema` with its `$ref` resolved against the document.
fn resolve<'a>(document: &'a Value, schema: &'a Value) -> &'a Value {
    match schema["$ref"].as_str() {
        Some(reference) => {
            let name = reference.rsplit('/').next().unwrap_or_default();
            &document["components"]["schemas"][name]
        }
        None => schema,
    }
}

/// A plausible value of `schema` (the shape the documentation asks for).
fn example(document: &Value, schema: &Value, depth: usize) -> Value {
    let schema = resolve(document, schema);
    if let Some(first) = schema["oneOf"].as_array().and_then(|a| a.first()) {
        return example(document, first, depth);
    }
    let kind = match &schema["type"] {
        Value::Array(kinds) => kinds
            .iter()
            .find(|k| *k != "null")
            .cloned()
            .unwrap_or_default(),
        other => other.clone(),
    };
    match (kind.as_str(), schema["format"].as_str()) {
        (Some("string"), Some("uuid")) => json!(Uuid::new_v4()),
        (Some("string"), Some("email")) => {
            json!(format!("h-{}@example.com", Uuid::new_v4().simple()))
        }
        (Some("string"), _) => schema["enum"]
            .as_array()
            .and_then(|e| e.first())
            .cloned()
            .unwrap_or_else(|| json!("EUR")),
        (Some("integer" | "number"), _) => json!(1),
        (Some("boolean"), _) => json!(true),
        (Some("array"), _) if depth < 4 => json!([example(document, &schema["items"], depth + 1)]),
        (Some("object"), _) | (None, _) if depth < 4 => {
            let mut object = serde_json::Map::new();
            if let Some(properties) = schema["properties"].as_object() {
                for (name, property) in properties {
                    object.insert(name.clone(), example(document, property, depth + 1));
                }
            }
            Value::Object(object)
        }
        _ => Value::Null,
    }
}

/// Bodies derived from `schema`: each property dropped, or replaced by each wrong value.
fn hostile_bodies(document: &Value, schema: &Value) -> Vec<(String, Vec<u8>)> {
    let valid = example(document, schema, 0);
    let mut bodies = Vec::new();
    let wrong: Vec<Value> = [
        json!(null),
        json!(123),
        json!(-1.5),
        json!(true),
        json!([]),
        json!({}),
    ]
    .into_iter()
    .chain(NASTY.iter().map(|s| json!(s)))
    .chain([json!("x".repeat(70_000))])
    .collect();
    if let Some(object) = valid.as_object() {
        for name in object.keys() {
            let mut dropped = object.clone();
            dropped.remove(name);
            bodies.push((
                format!("without {name}"),
                Value::Object(dropped).to_string().into_bytes(),
            ));
            for value in &wrong {
                let mut replaced = object.clone();
                replaced.insert(name.clone(), value.clone());
                let shown: String = value.to_string().chars().take(20).collect();
                bodies.push((
                    format!("{name} = {shown}"),
                    Value::Object(replaced).to_string().into_bytes(),
                ));
            }
        }
    }
    for (what, raw) in [
        ("an array", b"[]".to_vec()),
        ("a string", b"\"x\"".to_vec()),
        ("null", b"null".to_vec()),
        ("broken JSON", b"{\"name\": ".to_vec()),
        ("not UTF-8", vec![0xff, 0xfe, 0x7b]),
        ("empty", Vec::new()),
    ] {
        bodies.push((what.to_owned(), raw));
    }
    bodies
}

/// Every case of one operation.
fn cases(document: &Value, path: &str, method: &str, operation: &Value) -> Vec<Case> {
    let method: reqwest::Method = method.to_uppercase().parse().expect("an HTTP method");
    let parameters: Vec<&Value> = operation["parameters"]
        .as_array()
        .map(|a| a.iter().collect())
        .unwrap_or_default();
    let in_path: Vec<&str> = parameters
        .iter()
        .filter(|p| p["in"] == "path")
        .filter_map(|p| p["name"].as_str())
        .collect();
    let in_query: Vec<&str> = parameters
        .iter()
        .filter(|p| p["in"] == "query")
        .filter_map(|p| p["name"].as_str())
        .collect();
    let in_header: Vec<&str> = parameters
        .iter()
        .filter(|p| p["in"] == "header")
        .filter_map(|p| p["name"].as_str())
        .collect();
    let fill = |overrides: &BTreeMap<&str, String>| {
        in_path.iter().fold(path.to_owned(), |p, name| {
            let value = overrides
                .get(name)
                .cloned()
                .unwrap_or_else(|| Uuid::new_v4().to_string());
            p.replace(&format!("{{{name}}}"), &encode(&value))
        })
    };
    let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
    let valid_body =
        (!schema.is_null()).then(|| example(document, schema, 0).to_string().into_bytes());
    let base = |what: String| Case {
        method: method.clone(),
        path: fill(&BTreeMap::new()),
        query: Vec::new(),
        headers: Vec::new(),
        body: valid_body.clone(),
        what,
    };
    let mut all = Vec::new();
    for name in &in_path {
        for nasty in NASTY {
            all.push(Case {
                path: fill(&BTreeMap::from([(*name, (*nasty).to_owned())])),
                ..base(format!("path {name} = {nasty:?}"))
            });
        }
    }
    for name in in_query.iter().copied().chain(["undocumented"]) {
        for nasty in NASTY {
            all.push(Case {
                query: vec![(name.to_owned(), (*nasty).to_owned())],
                ..base(format!("query {name} = {nasty:?}"))
            });
        }
    }
    for name in &in_header {
        for nasty in NASTY
            .iter()
            .filter(|n| reqwest::header::HeaderValue::from_str(n).is_ok())
        {
            all.push(Case {
                headers: vec![((*name).to_owned(), (*nasty).to_owned())],
                ..base(format!("header {name} = {nasty:?}"))
            });
        }
    }
    if !schema.is_null() {
        for (what, body) in hostile_bodies(document, schema) {
            all.push(Case {
                body: Some(body),
                ..base(format!("body {what}"))
            });
        }
    }
    all
}

/// Every correlation id in the event topics.
async fn correlations_in_log(env: &TestEnv) -> anyhow::Result<HashSet<String>> {
    Ok(system_tests::events_in_log(env)
        .await?
        .into_iter()
        .map(|(_, document)| document.correlationid.to_string())
        .collect())
}

#[tokio::test]
async fn every_documented_operation_refuses_keyless_callers_and_survives_hostile_input()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    create_topics(&env).await?;
    let services = start_services(&service_env(&env, &env.brokers, &env.database_url)).await?;
    let (anonymous, keyed) = (reqwest::Client::new(), test_support::client(KEY));
    for service in &services {
        system_tests::wait_for_200(&service.url("/ready"), std::time::Duration::from_secs(30))
            .await?;
    }

    let mut server_errors = Vec::new();
    let mut let_in = Vec::new();
    let mut refused: Vec<(String, String)> = Vec::new();
    let mut operations = 0;
    let mut requests = 0;
    for service in &services {
        let document: Value = anonymous
            .get(service.url("/openapi.json"))
            .send()
            .await?
            .json()
            .await?;
        let paths = document["paths"].as_object().cloned().unwrap_or_default();
        assert!(!paths.is_empty(), "{} documents no operation", service.name);
        for (path, item) in &paths {
            for (method, operation) in item.as_object().into_iter().flatten() {
                if !["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                    continue;
                }
                operations += 1;
                let generated = cases(&document, path, method, operation);
                // The operation's own path, every path parameter a fresh id.
                let probe = path
                    .split('/')
                    .map(|segment| {
                        if segment.starts_with('{') {
                            Uuid::new_v4().to_string()
                        } else {
                            segment.to_owned()
                        }
                    })
                    .collect::<Vec<_>>()
                    .join("/");
                let method: reqwest::Method = method.to_uppercase().parse()?;
                // Without a valid key nothing gets past 401.
                for authorization in [
                    None,
                    Some("Bearer wrong-key"),
                    Some("Basic dGVzdC1rZXk6"),
                    Some("Bearer "),
                    Some(KEY),
                ] {
                    let mut request = anonymous.request(method.clone(), service.url(&probe));
                    if let Some(value) = authorization {
                        request = request.header("authorization", value);
                    }
                    let status = request.json(&json!({})).send().await?.status().as_u16();
                    requests += 1;
                    if status != 401 {
                        let_in.push(format!(
                            "{} {method} {probe} with {authorization:?}: {status}",
                            service.name
                        ));
                    }
                }
                for case in generated {
                    let correlation = Uuid::new_v4().to_string();
                    let query: Vec<String> = case
                        .query
                        .iter()
                        .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
                        .collect();
                    let url = if query.is_empty() {
                        service.url(&case.path)
                    } else {
                        format!("{}?{}", service.url(&case.path), query.join("&"))
                    };
                    let mut request = keyed
                        .request(case.method.clone(), url)
                        .header("x-correlation-id", &correlation)
                        .header("content-type", "application/json");
                    for (name, value) in &case.headers {
                        request = request.header(name.as_str(), value.as_str());
                    }
                    if let Some(body) = case.body {
                        request = request.body(body);
                    }
                    let response = request.send().await?;
                    requests += 1;
                    let status = response.status().as_u16();
                    if status >= 500 {
                        let body = response.text().await.unwrap_or_default();
                        server_errors.push(format!(
                            "{} {} {} [{}]: {status} {body}",
                            service.name, case.method, case.path, case.what
                        ));
                    } else if status >= 400 && case.method == reqwest::Method::POST {
                        refused.push((
                            correlation,
                            format!("{} {} [{}]: {status}", service.name, case.path, case.what),
                        ));
                    }
                }
            }
        }
    }
    let appended = correlations_in_log(&env).await?;
    let leaked: Vec<&String> = refused
        .iter()
        .filter(|(correlation, _)| appended.contains(correlation))
        .map(|(_, what)| what)
        .collect();
    eprintln!(
        "{operations} operations, {requests} requests, {} refused writes",
        refused.len()
    );
    assert!(operations >= 15, "only {operations} operations documented");
    assert!(server_errors.is_empty(), "5xx answers: {server_errors:#?}");
    assert!(let_in.is_empty(), "not refused with 401: {let_in:#?}");
    assert!(leaked.is_empty(), "refused yet appended: {leaked:#?}");
    for service in services {
        service.stop().await?;
    }
    Ok(())
}
