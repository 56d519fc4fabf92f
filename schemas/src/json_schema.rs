//! JSON Schema files for every command and event version, generated from the Rust types so
//! that they cannot drift. `cargo run -p schemas --bin generate-json-schemas` writes them
//! into `schemas/json/`; a test fails when the checked-in files differ from the types.

use std::collections::BTreeMap;
use std::path::PathBuf;

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::json;

use crate::catalog;
use crate::envelope::{CommandDocument, EventDocument, OutcomeDocument};
use crate::message::{MessageKind, MessageType};

/// The folder the files live in, relative to the repository root.
pub const DIR: &str = "schemas/json";

/// Every schema file: path relative to [`DIR`] -> file content.
pub fn files() -> BTreeMap<PathBuf, String> {
    let mut files = BTreeMap::new();
    for t in catalog::current_types()
        .into_iter()
        .chain(catalog::legacy_types())
    {
        files.insert(path_of(&t), render(message_schema(&t)));
    }
    files.insert(
        PathBuf::from("envelope/event.json"),
        render(root::<EventDocument>()),
    );
    files.insert(
        PathBuf::from("envelope/command.json"),
        render(root::<CommandDocument>()),
    );
    files.insert(
        PathBuf::from("envelope/outcome.json"),
        render(root::<OutcomeDocument>()),
    );
    files
}

fn path_of(t: &MessageType) -> PathBuf {
    let folder = match t.kind {
        MessageKind::Command => "commands",
        MessageKind::Event => "events",
    };
    PathBuf::from(format!(
        "{folder}/{}/{}.v{}.json",
        t.service, t.name, t.version
    ))
}

fn generator() -> SchemaGenerator {
    SchemaSettings::draft2020_12().into_generator()
}

fn root<T: JsonSchema>() -> Schema {
    generator().into_root_schema_for::<T>()
}

fn message_schema(t: &MessageType) -> Schema {
    let mut generator = generator();
    let mut schema = (t.schema)(&mut generator);
    let definitions = generator.take_definitions(true);
    let object = schema.ensure_object();
    object.insert("title".into(), json!(t.name));
    object.insert("x-message-kind".into(), json!(t.kind.as_str()));
    object.insert("x-schema-version".into(), json!(t.version));
    object.insert("x-aggregate-type".into(), json!(t.aggregate_type));
    if !definitions.is_empty() {
        object.insert("$defs".into(), serde_json::Value::Object(definitions));
    }
    schema.insert(
        "$schema".into(),
        json!("https://json-schema.org/draft/2020-12/schema"),
    );
    schema
}

fn render(schema: Schema) -> String {
    let mut text = serde_json::to_string_pretty(&schema).expect("a schema is JSON");
    text.push('\n');
    text
}
