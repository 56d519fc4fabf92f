//! Round trips of every type, the upcaster example, and the staleness check of the
//! checked-in JSON Schema files.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use chrono::{DateTime, TimeZone, Utc};
use proptest::prelude::*;
use serde_json::json;
use uuid::Uuid;

use crate::emails::{EmailCommand, EmailEvent};
use crate::envelope::{Command, CommandDocument, CommandMeta, Event, EventDocument, EventMeta};
use crate::message::MessageFamily;
use crate::notifications::{NotificationCommand, NotificationEvent};
use crate::orders::{OrderEvent, OrderLine, OrderPlaced};
use crate::payments::{PaymentCommand, PaymentEvent};
use crate::users::{UserCommand, UserEvent};
use crate::{DecodeError, Money, TraceParent, json_schema, orders::OrderCommand};

pub(crate) fn any_time() -> impl Strategy<Value = DateTime<Utc>> {
    // Year 1970 to 2200, nanosecond precision: what RFC 3339 can carry both ways.
    (0i64..7_258_118_400, 0u32..1_000_000_000)
        .prop_map(|(s, ns)| Utc.timestamp_opt(s, ns).single().expect("in range"))
}

pub(crate) fn any_uuid() -> impl Strategy<Value = Uuid> {
    any::<u128>().prop_map(Uuid::from_u128)
}

/// A validator per checked-in schema file, keyed by its path under `schemas/json`.
fn validators() -> &'static BTreeMap<PathBuf, jsonschema::Validator> {
    static VALIDATORS: OnceLock<BTreeMap<PathBuf, jsonschema::Validator>> = OnceLock::new();
    VALIDATORS.get_or_init(|| {
        json_schema::files()
            .into_iter()
            .map(|(path, text)| {
                let schema: serde_json::Value = serde_json::from_str(&text).unwrap();
                let validator = jsonschema::options()
                    .should_validate_formats(true)
                    .build(&schema)
                    .unwrap_or_else(|e| panic!("{} is not a valid schema: {e}", path.display()));
                (path, validator)
            })
            .collect()
    })
}

/// Asserts that `instance` is valid against the schema file at `path`.
fn assert_conforms(path: &str, instance: &serde_json::Value) {
    let validator = &validators()[&PathBuf::from(path)];
    let errors: Vec<String> = validator
        .iter_errors(instance)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{instance} violates {path}: {errors:?}");
}

/// The schema file of a message's current version.
fn schema_path<F: MessageFamily>(payload: &F) -> String {
    let folder = match F::KIND {
        crate::MessageKind::Command => "commands",
        crate::MessageKind::Event => "events",
    };
    format!(
        "{folder}/{}/{}.v{}.json",
        F::SERVICE,
        payload.type_name(),
        payload.schema_version()
    )
}

fn event_round_trip<E: MessageFamily>(meta: EventMeta, payload: E) {
    let event = Event { meta, payload };
    let document = event.to_document();
    assert_conforms(&schema_path(&event.payload), &document.data);
    assert_conforms(
        "envelope/event.json",
        &serde_json::to_value(&document).unwrap(),
    );
    let bytes = document.to_json();
    let parsed = EventDocument::from_json(&bytes).expect("parses");
    assert_eq!(parsed, document);
    assert_eq!(parsed.decode::<E>().expect("decodes"), event);
}

fn command_round_trip<C: MessageFamily>(meta: CommandMeta, payload: C) {
    let command = Command { meta, payload };
    let document = command.to_document();
    assert_conforms(&schema_path(&command.payload), &document.data);
    assert_conforms(
        "envelope/command.json",
        &serde_json::to_value(&document).unwrap(),
    );
    let parsed = CommandDocument::from_json(&document.to_json()).expect("parses");
    assert_eq!(parsed, document);
    assert_eq!(parsed.decode::<C>().expect("decodes"), command);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn user_events_round_trip(meta: EventMeta, payload: UserEvent) { event_round_trip(meta, payload) }
    #[test]
    fn order_events_round_trip(meta: EventMeta, payload: OrderEvent) { event_round_trip(meta, payload) }
    #[test]
    fn payment_events_round_trip(meta: EventMeta, payload: PaymentEvent) { event_round_trip(meta, payload) }
    #[test]
    fn notification_events_round_trip(meta: EventMeta, payload: NotificationEvent) { event_round_trip(meta, payload) }

    #[test]
    fn user_commands_round_trip(meta: CommandMeta, payload: UserCommand) { command_round_trip(meta, payload) }
    #[test]
    fn email_events_round_trip(meta: EventMeta, payload: EmailEvent) { event_round_trip(meta, payload) }
    #[test]
    fn email_commands_round_trip(meta: CommandMeta, payload: EmailCommand) { command_round_trip(meta, payload) }
    #[test]
    fn order_commands_round_trip(meta: CommandMeta, payload: OrderCommand) { command_round_trip(meta, payload) }
    #[test]
    fn payment_commands_round_trip(meta: CommandMeta, payload: PaymentCommand) { command_round_trip(meta, payload) }
    #[test]
    fn notification_commands_round_trip(meta: CommandMeta, payload: NotificationCommand) { command_round_trip(meta, payload) }

    #[test]
    fn money_round_trips(money: Money) {
        let text = serde_json::to_string(&money).unwrap();
        prop_assert_eq!(serde_json::from_str::<Money>(&text).unwrap(), money);
    }

    #[test]
    fn traceparent_round_trips(tp: TraceParent) {
        prop_assert_eq!(tp.to_string().parse::<TraceParent>().unwrap(), tp);
    }
}

fn sample_meta() -> EventMeta {
    EventMeta {
        id: "0190a5c8-0000-7000-8000-000000000001".parse().unwrap(),
        version: 1,
        occurred_at: "2024-03-01T10:00:00Z".parse().unwrap(),
        command_id: "0190a5c8-0000-7000-8000-000000000002".parse().unwrap(),
        correlation_id: "0190a5c8-0000-7000-8000-000000000003".parse().unwrap(),
        causation_id: "0190a5c8-0000-7000-8000-000000000002".parse().unwrap(),
        traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    }
}

/// The JSON a release from the euro-only days wrote, byte for byte as it sits in the log.
const ORDER_PLACED_V1_RECORD: &str = r#"{
  "specversion": "1.0",
  "id": "0190a5c8-0000-7000-8000-000000000001",
  "source": "/shop/orders",
  "type": "OrderPlaced",
  "subject": "0190a5c8-0000-7000-8000-0000000000aa",
  "time": "2024-03-01T10:00:00Z",
  "datacontenttype": "application/json",
  "schemaversion": 1,
  "aggregatetype": "order",
  "aggregateversion": 1,
  "commandid": "0190a5c8-0000-7000-8000-000000000002",
  "correlationid": "0190a5c8-0000-7000-8000-000000000003",
  "causationid": "0190a5c8-0000-7000-8000-000000000002",
  "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
  "data": {
    "order_id": "0190a5c8-0000-7000-8000-0000000000aa",
    "user_id": "0190a5c8-0000-7000-8000-0000000000bb",
    "lines": [
      {"sku": "SKU-1", "qty": 2, "price_cents": 1250},
      {"sku": "SKU-2", "qty": 1, "price_cents": 499}
    ]
  }
}"#;

#[test]
fn order_placed_v1_from_the_log_is_read_as_v2() {
    let document = EventDocument::from_json(ORDER_PLACED_V1_RECORD.as_bytes()).unwrap();
    let event = document.decode::<OrderEvent>().unwrap();
    let expected = OrderPlaced {
        order_id: "0190a5c8-0000-7000-8000-0000000000aa".parse().unwrap(),
        user_id: "0190a5c8-0000-7000-8000-0000000000bb".parse().unwrap(),
        currency: "EUR".parse().unwrap(),
        lines: vec![
            OrderLine {
                sku: "SKU-1".into(),
                quantity: 2,
                unit_price_cents: 1250,
            },
            OrderLine {
                sku: "SKU-2".into(),
                quantity: 1,
                unit_price_cents: 499,
            },
        ],
        total_cents: 2999,
    };
    assert_eq!(event.payload, OrderEvent::OrderPlaced(expected));
    assert_eq!(event.meta, sample_meta());
    // Written back, it is a v2 event: the log is never rewritten, readers are.
    assert_eq!(event.to_document().schemaversion, 2);
}

#[test]
fn an_event_document_reads_as_documented() {
    let payload = OrderEvent::OrderRejected(crate::orders::OrderRejected {
        order_id: "0190a5c8-0000-7000-8000-0000000000aa".parse().unwrap(),
        reason: "payment declined".into(),
    });
    let document = Event {
        meta: sample_meta(),
        payload,
    }
    .to_document();
    let value: serde_json::Value = serde_json::from_slice(&document.to_json()).unwrap();
    assert_eq!(
        value,
        json!({
            "specversion": "1.0",
            "id": "0190a5c8-0000-7000-8000-000000000001",
            "source": "/shop/orders",
            "type": "OrderRejected",
            "subject": "0190a5c8-0000-7000-8000-0000000000aa",
            "time": "2024-03-01T10:00:00Z",
            "datacontenttype": "application/json",
            "schemaversion": 1,
            "aggregatetype": "order",
            "aggregateversion": 1,
            "commandid": "0190a5c8-0000-7000-8000-000000000002",
            "correlationid": "0190a5c8-0000-7000-8000-000000000003",
            "causationid": "0190a5c8-0000-7000-8000-000000000002",
            "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "data": {"order_id": "0190a5c8-0000-7000-8000-0000000000aa", "reason": "payment declined"}
        })
    );
    let headers: BTreeMap<_, _> = document.headers().into_iter().collect();
    assert_eq!(headers["ce_type"], "OrderRejected");
    assert_eq!(headers["ce_aggregateversion"], "1");
    assert_eq!(headers["content-type"], crate::envelope::CONTENT_TYPE);
}

#[test]
fn records_that_are_not_ours_are_refused_with_a_reason() {
    let mut document = EventDocument::from_json(ORDER_PLACED_V1_RECORD.as_bytes()).unwrap();
    assert!(matches!(
        document.clone().decode::<UserEvent>(),
        Err(DecodeError::WrongAggregate { .. })
    ));
    document.subject = "someone-else".into();
    assert!(matches!(
        document.clone().decode::<OrderEvent>(),
        Err(DecodeError::SubjectMismatch { .. })
    ));
    document.event_type = "OrderTeleported".into();
    assert!(matches!(
        document.decode::<OrderEvent>(),
        Err(DecodeError::UnknownType { .. })
    ));
    assert!(matches!(
        EventDocument::from_json(b"{\"hello\": 1}"),
        Err(DecodeError::Malformed(_))
    ));
}

#[test]
fn checked_in_json_schemas_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let expected = json_schema::files();
    let mut on_disk = BTreeMap::new();
    collect(&dir, &dir, &mut on_disk);
    let stale: Vec<_> = expected
        .iter()
        .filter(|(path, content)| on_disk.get(*path) != Some(*content))
        .map(|(path, _)| path.display().to_string())
        .chain(
            on_disk
                .keys()
                .filter(|p| !expected.contains_key(*p))
                .map(|p| format!("{} (no such type)", p.display())),
        )
        .collect();
    assert!(
        stale.is_empty(),
        "stale JSON Schema files in schemas/json: {stale:?}; \
         run `cargo run -p schemas --bin generate-json-schemas` and commit the result"
    );
}

fn collect(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, String>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries {
        let path = entry.unwrap().path();
        if path.is_dir() {
            collect(root, &path, out);
        } else {
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            out.insert(relative, fs::read_to_string(&path).unwrap());
        }
    }
}

#[test]
fn order_placed_v1_record_conforms_to_the_v1_schema() {
    let record: serde_json::Value = serde_json::from_str(ORDER_PLACED_V1_RECORD).unwrap();
    assert_conforms("events/orders/OrderPlaced.v1.json", &record["data"]);
    assert_conforms("envelope/event.json", &record);
}

#[test]
fn the_order_placed_schema_lists_every_field_and_its_version() {
    let files = json_schema::files();
    let schema: serde_json::Value =
        serde_json::from_str(&files[&PathBuf::from("events/orders/OrderPlaced.v2.json")]).unwrap();
    let properties = schema["properties"].as_object().unwrap();
    for field in ["order_id", "user_id", "currency", "lines", "total_cents"] {
        assert!(properties.contains_key(field), "{field} missing");
    }
    assert_eq!(schema["x-schema-version"], 2);
    assert!(files.contains_key(&PathBuf::from("events/orders/OrderPlaced.v1.json")));
}

#[test]
fn schemas_refuse_what_the_types_would_not_write() {
    let placed = &validators()[&PathBuf::from("events/orders/OrderPlaced.v2.json")];
    let good = json!({
        "order_id": "0190a5c8-0000-7000-8000-0000000000aa",
        "user_id": "0190a5c8-0000-7000-8000-0000000000bb",
        "currency": "EUR",
        "lines": [{"sku": "A", "quantity": 1, "unit_price_cents": 5}],
        "total_cents": 5
    });
    assert!(placed.is_valid(&good));
    let mut no_currency = good.clone();
    no_currency.as_object_mut().unwrap().remove("currency");
    assert!(!placed.is_valid(&no_currency));
    let mut zero_quantity = good.clone();
    zero_quantity["lines"][0]["quantity"] = json!(0);
    assert!(!placed.is_valid(&zero_quantity));
    let mut not_a_uuid = good;
    not_a_uuid["order_id"] = json!("order-1");
    assert!(!placed.is_valid(&not_a_uuid));
}
