//! Subscriptions on the real broker: decoded and upcast batches with positions, records
//! that cannot be decoded sent to the dead letters with the reason and position, and a
//! restart that resumes exactly at the offsets the reader stored.

use std::collections::BTreeMap;
use std::time::Duration;

use event_store::subscription::{Batch, Offsets, Subscription};
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schemas::orders::{OrderEvent, OrderRejected};
use schemas::{CommandId, CorrelationId, Event, EventId, EventMeta, OrderId, TraceParent};
use test_support::TestEnv;

const WAIT: Duration = Duration::from_secs(10);

fn rejected(order: OrderId, version: u64) -> Vec<u8> {
    Event {
        meta: EventMeta::new(version),
        payload: OrderEvent::OrderRejected(OrderRejected {
            order_id: order,
            reason: "payment declined".into(),
        }),
    }
    .to_document()
    .to_json()
}

/// An `OrderPlaced` as the euro-only release wrote it (schema version 1).
fn placed_v1(order: OrderId) -> Vec<u8> {
    serde_json::json!({
        "specversion": "1.0", "id": EventId::new(), "source": "/shop/orders", "type": "OrderPlaced",
        "subject": order, "time": "2024-03-01T10:00:00Z", "datacontenttype": "application/json",
        "schemaversion": 1, "aggregatetype": "order", "aggregateversion": 1,
        "commandid": CommandId::new(), "correlationid": CorrelationId::new(),
        "causationid": uuid::Uuid::now_v7(), "traceparent": TraceParent::new_root(),
        "data": {"order_id": order, "user_id": OrderId::new(), "lines": [{"sku": "A", "qty": 3, "price_cents": 100}]}
    })
    .to_string()
    .into_bytes()
}

async fn drain(
    subscription: &mut Subscription<Event<OrderEvent>>,
    records: usize,
) -> anyhow::Result<Batch<Event<OrderEvent>>> {
    let mut all = Batch {
        delivered: Vec::new(),
        next_offsets: BTreeMap::new(),
        dead: Vec::new(),
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while all.delivered.len() + all.dead.len() < records && tokio::time::Instant::now() < deadline {
        let batch = subscription
            .next_batch(100, Duration::from_secs(1), Duration::from_millis(50))
            .await?;
        all.delivered.extend(batch.delivered);
        all.dead.extend(batch.dead);
        all.next_offsets.extend(batch.next_offsets);
    }
    Ok(all)
}

#[tokio::test]
async fn delivers_decoded_batches_dead_letters_the_rest_and_resumes_where_the_reader_stored()
-> anyhow::Result<()> {
    let env = TestEnv::new().await;
    let settings = KafkaSettings::new(&env.brokers);
    let names = TopicNames::new(&env.topic_prefix);
    TopicAdmin::new(&settings)?
        .create(&names.for_services(&["orders"], 1), 1)
        .await?;
    let topic = names.events("orders");
    let order = OrderId::new();
    let producer: FutureProducer = settings.producer().create()?;
    let key = order.to_string();
    let values: Vec<Vec<u8>> = vec![
        placed_v1(order),
        rejected(order, 2),
        b"{ this is not an event".to_vec(),
        rejected(OrderId::new(), 1),
    ];
    for value in &values {
        producer
            .send(FutureRecord::to(&topic).key(&key).payload(value), WAIT)
            .await
            .map_err(|(e, _)| e)?;
    }

    let dead_letters = names.dead_letters();
    let mut subscription = Subscription::<Event<OrderEvent>>::start(
        &settings,
        &format!("{}projector", env.topic_prefix),
        std::slice::from_ref(&topic),
        dead_letters.clone(),
        Offsets::new(),
    )?;
    let batch = drain(&mut subscription, 4).await?;
    let offsets: Vec<i64> = batch.delivered.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, [0, 1, 3]);
    assert_eq!(batch.dead_lettered(), 1);
    assert_eq!(batch.dead[0].offset, 2);
    assert_eq!(batch.dead[0].key.as_deref(), Some(key.as_str()));
    assert_eq!(batch.next_offsets[&(topic.clone(), 0)], 4);
    // Version 1 was upcast on the way: currency and total are there.
    let OrderEvent::OrderPlaced(placed) = &batch.delivered[0].item.payload else {
        panic!("an OrderPlaced first");
    };
    assert_eq!((placed.currency.code(), placed.total_cents), ("EUR", 300));

    // The undecodable record sits in the dead letters, unchanged, with why and where.
    let inspector: StreamConsumer = settings
        .consumer(&format!("{}inspector", env.topic_prefix))
        .create()?;
    let mut from_start = TopicPartitionList::new();
    from_start.add_partition_offset(&dead_letters, 0, Offset::Beginning)?;
    inspector.assign(&from_start)?;
    let dead = tokio::time::timeout(WAIT, inspector.recv()).await??;
    assert_eq!(dead.payload(), Some(&values[2][..]));
    assert_eq!(dead.key(), Some(key.as_bytes()));
    let headers: BTreeMap<String, String> = dead
        .headers()
        .map(|h| {
            h.iter()
                .map(|x| {
                    (
                        x.key.to_owned(),
                        String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(headers["dlq_topic"], topic);
    assert_eq!(headers["dlq_offset"], "2");
    assert!(
        headers["dlq_error"].contains("not a CloudEvents JSON document"),
        "{headers:?}"
    );
    drop(subscription);

    // A reader that stored "next is 1" resumes there, in a new process, whatever Kafka's
    // own committed offsets say (it never commits any).
    let mut resumed = Subscription::<Event<OrderEvent>>::start(
        &settings,
        &format!("{}projector", env.topic_prefix),
        std::slice::from_ref(&topic),
        dead_letters,
        Offsets::from([((topic.clone(), 0), 1)]),
    )?;
    let again = drain(&mut resumed, 3).await?;
    let offsets: Vec<i64> = again.delivered.iter().map(|d| d.offset).collect();
    assert_eq!(offsets, [1, 3]);
    Ok(())
}
