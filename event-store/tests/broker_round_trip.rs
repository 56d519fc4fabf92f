//! Against the real broker the test command started: topics are created as specified and
//! pass preflight, a bad topic fails it, and an envelope comes back byte for byte.

use std::time::Duration;

use anyhow::Context;
use event_store::record::{header_pairs, to_kafka_headers};
use event_store::topics::{TopicProblem, TopicRole};
use event_store::{EventStoreError, KafkaSettings, TopicAdmin, TopicNames, TopicSpec};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Message, Offset, TopicPartitionList};
use schemas::orders::{OrderEvent, OrderLine, OrderPlaced};
use schemas::{Event, EventDocument, EventMeta, OrderId, UserId};
use test_support::TestEnv;

const WAIT: Duration = Duration::from_secs(15);

fn order_placed() -> Event<OrderEvent> {
    let order_id = OrderId::new();
    Event {
        meta: EventMeta::new(1),
        payload: OrderEvent::OrderPlaced(OrderPlaced {
            order_id,
            user_id: UserId::new(),
            currency: "EUR".parse().expect("EUR is ISO 4217"),
            lines: vec![OrderLine {
                sku: "SKU-ünïcödé \"quoted\"".into(),
                quantity: 2,
                unit_price_cents: 1250,
            }],
            total_cents: 2500,
        }),
    }
}

#[tokio::test]
async fn created_topics_pass_preflight_with_their_configs_reported() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let settings = KafkaSettings::new(&env.brokers);
    let admin = TopicAdmin::new(&settings)?;
    let specs = TopicNames::new(&env.topic_prefix).all(3);

    let created = admin.create(&specs, 1).await?;
    assert_eq!(created.len(), specs.len());
    // A second run finds them and changes nothing.
    let again = admin.create(&specs, 1).await?;
    assert!(
        again
            .iter()
            .all(|c| matches!(c, event_store::admin::Created::AlreadyExisted(_)))
    );

    admin.preflight(&specs).await?;
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let observed = admin.describe(&names).await?;
    let events = &observed[&format!("{}orders.events", env.topic_prefix)];
    assert_eq!(events.partitions, 3);
    assert_eq!(events.configs["cleanup.policy"], "delete");
    assert_eq!(events.configs["retention.ms"], "-1", "kept forever");
    Ok(())
}

#[tokio::test]
async fn preflight_refuses_compacted_and_missing_event_topics() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let admin = TopicAdmin::new(&KafkaSettings::new(&env.brokers))?;
    let mut spec = TopicNames::new(&env.topic_prefix)
        .all(2)
        .into_iter()
        .find(|s| s.role == TopicRole::Events)
        .context("an event topic")?;

    let missing = admin
        .preflight(std::slice::from_ref(&spec))
        .await
        .unwrap_err();
    assert!(matches!(
        missing,
        EventStoreError::Topic(TopicProblem::Missing(_))
    ));

    let mut compacted: TopicSpec = spec.clone();
    compacted.configs.insert("cleanup.policy", "compact".into());
    admin.create(&[compacted], 1).await?;
    let err = admin
        .preflight(std::slice::from_ref(&spec))
        .await
        .unwrap_err();
    assert!(
        err.to_string().contains("cleanup.policy=compact"),
        "unexpected: {err}"
    );

    spec.partitions = 5;
    let err = admin.preflight(&[spec]).await.unwrap_err();
    assert!(
        err.to_string().contains("has 2 partitions, configured 5"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn an_event_envelope_comes_back_byte_for_byte_with_its_headers() -> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let settings = KafkaSettings::new(&env.brokers);
    let names = TopicNames::new(&env.topic_prefix);
    TopicAdmin::new(&settings)?.create(&names.all(2), 1).await?;
    let topic = names.events("orders");

    let event = order_placed();
    let document = event.to_document();
    let value = document.to_json();
    let headers = document.headers();
    let producer: FutureProducer = settings.producer().create()?;
    let record = FutureRecord::to(&topic)
        .key(&document.subject)
        .payload(&value)
        .headers(to_kafka_headers(&headers));
    let delivery = producer
        .send(record, WAIT)
        .await
        .map_err(|(e, _)| e)
        .context("produce")?;

    let consumer: StreamConsumer = settings
        .consumer(&format!("{}reader", env.topic_prefix))
        .create()?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(&topic, delivery.partition, Offset::Offset(delivery.offset))?;
    consumer.assign(&assignment)?;
    let message = tokio::time::timeout(WAIT, consumer.recv()).await??;

    assert_eq!(message.key(), Some(document.subject.as_bytes()));
    assert_eq!(message.payload(), Some(value.as_slice()));
    let expected_headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    assert_eq!(header_pairs(&message), expected_headers);
    let read_back = EventDocument::from_json(message.payload().context("a value")?)?;
    assert_eq!(read_back.decode::<OrderEvent>()?, event);
    Ok(())
}

/// The topics we create (`retention.ms=-1`) keep every acknowledged record across a
/// SIGKILL of the broker and its restart.
#[tokio::test]
async fn event_topics_keep_every_record_across_a_broker_restart() -> anyhow::Result<()> {
    let mut broker = test_support::PrivateBroker::start().await;
    let settings = KafkaSettings::new(&broker.brokers);
    let names = TopicNames::new("");
    TopicAdmin::new(&settings)?.create(&names.all(1), 1).await?;
    let topic = names.events("orders");
    let producer: FutureProducer = settings.producer().create()?;
    for _ in 0..50 {
        let document = order_placed().to_document();
        let value = document.to_json();
        let record = FutureRecord::to(&topic)
            .key(&document.subject)
            .payload(&value);
        producer.send(record, WAIT).await.map_err(|(e, _)| e)?;
    }
    drop(producer);

    broker.restart().await;
    let consumer: StreamConsumer = settings.consumer("after-restart").create()?;
    let (low, high) =
        tokio::task::spawn_blocking(move || consumer.fetch_watermarks(&topic, 0, WAIT)).await??;
    assert_eq!((low, high), (0, 50), "records lost across a restart");
    Ok(())
}

/// Records read back by position carry key, headers and value; a position without a
/// record fails a strict read and is only left out of a tolerant one.
#[tokio::test]
async fn records_are_read_back_by_position_and_missing_ones_left_out_on_request()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let settings = KafkaSettings::new(&env.brokers);
    let names = TopicNames::new(&env.topic_prefix);
    TopicAdmin::new(&settings)?.create(&names.all(1), 1).await?;
    let topic = names.events("orders");
    let producer: FutureProducer = settings.producer().create()?;
    let mut written = Vec::new();
    for _ in 0..3 {
        let document = order_placed().to_document();
        let delivered = producer
            .send(
                FutureRecord::to(&topic)
                    .key(&document.subject)
                    .payload(&document.to_json())
                    .headers(to_kafka_headers(&document.headers())),
                WAIT,
            )
            .await
            .map_err(|(e, _)| e)?;
        written.push((document, delivered.offset));
    }
    let at = |offset: i64| (topic.clone(), 0, offset);
    let (first, last) = (written[0].1, written[2].1);
    let wanted = [at(first), at(last), at(last + 50)];

    let strict = event_store::lookup::records_at(&settings, &wanted).await;
    assert!(strict.is_err(), "{strict:?}");
    let found = event_store::lookup::records_found(&settings, &wanted).await?;
    assert_eq!(found.len(), 2, "{found:?}");
    for (document, offset) in [&written[0], &written[2]] {
        let record = &found[&at(*offset)];
        assert_eq!(
            record.key_text().as_deref(),
            Some(document.subject.as_str())
        );
        assert_eq!(record.header("ce_type"), Some("OrderPlaced"));
        assert_eq!(
            record.payload.as_deref(),
            Some(document.to_json().as_slice())
        );
    }
    // In between, skipped over: the middle record was not asked for.
    assert!(!found.contains_key(&at(written[1].1)));
    Ok(())
}
