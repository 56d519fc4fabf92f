//! Catch-up and rebuilds: how fast each projector turns a topic full of events into rows,
//! and how fast `shopctl rebuild` rebuilds them (blue/green, then in place), against raw
//! Postgres COPY of the same rows into the same table, in one run.
//!
//!     ./dev bench                      (BENCH_EVENTS=1000000 for the full size)
//!
//! For each read model, `BENCH_EVENTS` events (default 200,000) are written to its topic on
//! a private Apache Kafka node; the projector starts from offset
//! zero and the clock stops when its checkpoints reach the end. Then the model is rebuilt
//! blue/green (shadow from offset zero, checksums of both, swap) and in place (one
//! transaction), each timed whole, through the same library calls `shopctl rebuild` makes.
//! Then the rows are copied out, the table emptied, and the same rows COPYed back in,
//! timed. A plain consumer reading the same topic from offset zero (no decoding, no
//! Postgres) gives the broker's own ceiling, measured in the same run. The event index
//! comes last: it reads the four topics the other models were built from.

use std::time::{Duration, Instant};

use event_store::reader::bookkeeping;
use event_store::record::to_kafka_headers;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use futures_util::StreamExt;
use projections::projector::metrics::{ProjectorMetrics, STAGES};
use projections::projector::runner::{Projector, ProjectorConfig};
use projections::projector::{ReadModel, Schema};
use projections::read_models::event_index::EventIndex;
use projections::read_models::notifications::Notifications;
use projections::read_models::orders::Orders;
use projections::read_models::payments::Payments;
use projections::read_models::users::Users;
use projections::rebuild::{self, Mode, Rebuild, RebuildReport, Silent};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use schemas::notifications::{NotificationKind, NotificationSent};
use schemas::orders::{OrderLine, OrderPlaced};
use schemas::payments::PaymentAuthorized;
use schemas::users::UserRegistered;
use schemas::{
    Event, EventDocument, EventMeta, MessageFamily, Money, NotificationId, OrderId, PaymentId,
    UserId,
};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 8;

fn document<E: MessageFamily>(payload: impl Into<E>) -> EventDocument {
    Event::<E> {
        meta: EventMeta::new(1),
        payload: payload.into(),
    }
    .to_document()
}

/// One creation event per aggregate: every event becomes one row.
fn events_of(model: &str, count: usize) -> Vec<EventDocument> {
    let eur = || "EUR".parse().expect("EUR");
    (0..count)
        .map(|i| match model {
            "users" => document::<schemas::users::UserEvent>(UserRegistered {
                user_id: UserId::new(),
                name: format!("User {i}"),
                email: format!("user{i}@example.com"),
                claim_id: None,
            }),
            "orders" => document::<schemas::orders::OrderEvent>(OrderPlaced {
                order_id: OrderId::new(),
                user_id: UserId::new(),
                currency: eur(),
                lines: vec![OrderLine {
                    sku: "SKU-1".into(),
                    quantity: 2,
                    unit_price_cents: 1250,
                }],
                total_cents: 2500,
            }),
            "payments" => {
                let order = OrderId::new();
                document::<schemas::payments::PaymentEvent>(PaymentAuthorized {
                    payment_id: PaymentId::for_order(order),
                    order_id: order,
                    amount: Money {
                        amount_cents: 2500,
                        currency: eur(),
                    },
                    provider_reference: format!("ref-{i}"),
                })
            }
            _ => {
                let order = OrderId::new();
                document::<schemas::notifications::NotificationEvent>(NotificationSent {
                    notification_id: NotificationId::for_order(
                        order,
                        NotificationKind::OrderConfirmed,
                    ),
                    order_id: order,
                    user_id: UserId::new(),
                    kind: NotificationKind::OrderConfirmed,
                    attempts: 1,
                })
            }
        })
        .collect()
}

async fn write(
    settings: &KafkaSettings,
    topic: &str,
    documents: &[EventDocument],
) -> anyhow::Result<()> {
    let mut config = settings.producer();
    config
        .set("linger.ms", "20")
        .set("batch.num.messages", "5000");
    let producer: FutureProducer = config.create()?;
    let sends = futures_util::stream::iter(documents.iter().map(|d| {
        let producer = producer.clone();
        let (key, value, headers) = (d.subject.clone(), d.to_json(), d.headers());
        async move {
            let record = FutureRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(to_kafka_headers(&headers));
            producer
                .send(record, Duration::from_secs(120))
                .await
                .map_err(|(e, _)| e)
        }
    }))
    .buffer_unordered(256);
    let results: Vec<_> = sends.collect().await;
    for result in results {
        result?;
    }
    Ok(())
}

/// Where a catch-up's time went: batches, and seconds summed per stage (`STAGES`).
struct Stages {
    batches: u64,
    seconds: Vec<f64>,
}

/// Seconds for the projector of `M` to apply everything in its topic, and its stages.
async fn catch_up<M: ReadModel>(
    pool: &PgPool,
    settings: &KafkaSettings,
    topics: &TopicNames,
    count: usize,
) -> anyhow::Result<(f64, Stages)> {
    let schema = Schema::live(M::NAME);
    let config = ProjectorConfig {
        kafka: settings.clone(),
        topics: topics.clone(),
        batch_max: 2000,
    };
    let mut registry = prometheus_client::registry::Registry::default();
    let projector = Projector::<M>::new(
        pool.clone(),
        schema.clone(),
        config,
        ProjectorMetrics::register(&mut registry),
    );
    let stop = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(projector.run(stop.clone()));
    loop {
        if started.elapsed() > Duration::from_secs(600) {
            stop.cancel();
            anyhow::bail!(
                "{}: the projector did not catch up within 10 minutes",
                M::NAME
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        let Ok(mut conn) = pool.acquire().await else {
            continue;
        };
        let Ok(checkpoints) = bookkeeping::checkpoints(&mut conn, &schema).await else {
            continue;
        };
        let done: i64 = checkpoints.iter().map(|c| c.next_offset).sum();
        if done >= i64::try_from(count)? {
            break;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    task.await?;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry)?;
    let stage = |name: &str| {
        test_support::metrics::histogram(
            &text,
            "projector_stage_seconds",
            &[("read_model", M::NAME), ("stage", name)],
        )
    };
    let stages = Stages {
        batches: stage("commit").count,
        seconds: STAGES.iter().map(|name| stage(name).sum).collect(),
    };
    Ok((seconds, stages))
}

/// Seconds for a plain consumer, outside any group, to receive every record of `topics`.
async fn raw_consume(
    settings: &KafkaSettings,
    topics: &[String],
    count: usize,
) -> anyhow::Result<f64> {
    let consumer: StreamConsumer = settings.consumer("bench-raw-consume").create()?;
    let mut assignment = TopicPartitionList::new();
    for topic in topics {
        for partition in 0..PARTITIONS {
            assignment.add_partition_offset(topic, partition, Offset::Offset(0))?;
        }
    }
    consumer.assign(&assignment)?;
    let started = Instant::now();
    let mut received = 0;
    while received < count {
        let message = tokio::time::timeout(Duration::from_secs(60), consumer.recv()).await??;
        std::hint::black_box(message.payload());
        received += 1;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// Seconds to COPY the rows now in `table` back into it (after emptying it).
async fn raw_copy(pool: &PgPool, table: &str) -> anyhow::Result<(u64, f64)> {
    let mut conn = pool.acquire().await?;
    let mut out = conn
        .copy_out_raw(&format!("COPY {table} TO STDOUT (FORMAT binary)"))
        .await?;
    let mut data = Vec::new();
    while let Some(chunk) = out.next().await {
        data.extend_from_slice(&chunk?);
    }
    drop(out);
    sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {table}")))
        .execute(&mut *conn)
        .await?;
    let started = Instant::now();
    let mut copy = conn
        .copy_in_raw(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await?;
    copy.send(data.as_slice()).await?;
    let rows = copy.finish().await?;
    Ok((rows, started.elapsed().as_secs_f64()))
}

/// What one model measured.
struct Measured {
    model: &'static str,
    events: usize,
    rows: u64,
    catch_up: f64,
    stages: Stages,
    copy: f64,
    consume: f64,
    blue_green: RebuildReport,
    in_place: RebuildReport,
}

impl Measured {
    fn catch_up_row(&self) -> String {
        let (projector, copy, consume) = (
            self.rows as f64 / self.catch_up,
            self.rows as f64 / self.copy,
            self.events as f64 / self.consume,
        );
        format!(
            "| {} | {} | {} | {:.1} | {projector:.0} | {copy:.0} | {:.2} | {consume:.0} | {:.2} |",
            self.model,
            self.events,
            self.rows,
            self.catch_up,
            projector / copy,
            projector / consume,
        )
    }

    fn stages_row(&self) -> String {
        let seconds: Vec<String> = self
            .stages
            .seconds
            .iter()
            .map(|s| format!("{s:.2}"))
            .collect();
        format!(
            "| {} | {:.1} | {} | {} |",
            self.model,
            self.catch_up,
            self.stages.batches,
            seconds.join(" | ")
        )
    }

    fn rebuild_row(&self) -> String {
        let copy = self.rows as f64 / self.copy;
        let rate = |r: &RebuildReport| self.rows as f64 / r.seconds;
        format!(
            "| {} | {} | {:.1} | {:.0} | {:.2} | {} | {:.1} | {:.0} | {:.2} | {copy:.0} |",
            self.model,
            self.rows,
            self.blue_green.seconds,
            rate(&self.blue_green),
            rate(&self.blue_green) / copy,
            self.blue_green.identical == Some(true),
            self.in_place.seconds,
            rate(&self.in_place),
            rate(&self.in_place) / copy,
        )
    }
}

/// Catch-up, both rebuilds and COPY of model `M`, whose events are already in `read`.
async fn measure<M: ReadModel>(
    pool: &PgPool,
    settings: &KafkaSettings,
    topics: &TopicNames,
    (read, events): (&[String], usize),
    table: &str,
) -> anyhow::Result<Measured> {
    let consume = raw_consume(settings, read, events).await?;
    let (catch_up, stages) = catch_up::<M>(pool, settings, topics, events).await?;
    let rebuild = Rebuild {
        pool: pool.clone(),
        kafka: settings.clone(),
        topics: topics.clone(),
        partitions: PARTITIONS,
        batch_max: 2000,
        restart: true,
    };
    let blue_green =
        rebuild::run(M::NAME, &rebuild, Mode::BlueGreen { swap: true }, &Silent).await?;
    let in_place = rebuild::run(M::NAME, &rebuild, Mode::InPlace, &Silent).await?;
    anyhow::ensure!(
        blue_green.identical == Some(true) && in_place.identical == Some(true),
        "{}: a rebuild differs from the caught-up model:\nblue/green {}\nin place {}",
        M::NAME,
        serde_json::to_string(&blue_green)?,
        serde_json::to_string(&in_place)?
    );
    let (rows, copy) = raw_copy(pool, &Schema::live(M::NAME).table(table)).await?;
    Ok(Measured {
        model: M::NAME,
        events,
        rows,
        catch_up,
        stages,
        copy,
        consume,
        blue_green,
        in_place,
    })
}

/// Writes `count` creation events of model `M` to its topic, then measures it.
async fn write_and_measure<M: ReadModel>(
    pool: &PgPool,
    settings: &KafkaSettings,
    topics: &TopicNames,
    count: usize,
    table: &str,
) -> anyhow::Result<Measured> {
    let topic = topics.events(M::SERVICES[0]);
    let documents = events_of(M::NAME, count);
    let written = Instant::now();
    write(settings, &topic, &documents).await?;
    eprintln!(
        "{}: {count} events written in {:.1} s",
        M::NAME,
        written.elapsed().as_secs_f64()
    );
    drop(documents);
    measure::<M>(pool, settings, topics, (&[topic], count), table).await
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let count: usize = test_support::bench_knob("BENCH_EVENTS", 200_000);
    let env = test_support::TestEnv::new().await;
    let broker = test_support::PrivateBroker::start().await;
    let mut settings = KafkaSettings::new(&broker.brokers);
    settings.timeout = Duration::from_secs(30);
    println!("a private Apache Kafka node, {PARTITIONS} partitions per topic");
    let topics = TopicNames::new("");
    TopicAdmin::new(&settings)?
        .create(&topics.all(PARTITIONS), 1)
        .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .connect(&env.database_url)
        .await?;
    let setup = (&pool, &settings, &topics);
    let mut measured = vec![
        write_and_measure::<Users>(setup.0, setup.1, setup.2, count, "users").await?,
        write_and_measure::<Orders>(setup.0, setup.1, setup.2, count, "orders").await?,
        write_and_measure::<Payments>(setup.0, setup.1, setup.2, count, "payments").await?,
        write_and_measure::<Notifications>(setup.0, setup.1, setup.2, count, "notifications")
            .await?,
    ];
    let built: Vec<String> = ["users", "orders", "payments", "notifications"]
        .iter()
        .map(|s| topics.events(s))
        .collect();
    measured.push(
        measure::<EventIndex>(&pool, &settings, &topics, (&built, count * 4), "events").await?,
    );
    println!(
        "| read model | events | rows | catch-up s | projector rows/s | raw COPY rows/s | projector / COPY | raw consume records/s | projector / consume |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for m in &measured {
        println!("{}", m.catch_up_row());
    }
    println!();
    println!("Where the catch-up's time went, seconds summed over its batches:");
    println!();
    println!(
        "| read model | catch-up s | batches | {} |",
        STAGES.join(" | ")
    );
    println!("|---|---|---|{}", "---|".repeat(STAGES.len()));
    for m in &measured {
        println!("{}", m.stages_row());
    }
    println!();
    println!(
        "| read model | rows | blue/green s | blue/green rows/s | blue/green / COPY | identical | in place s | in place rows/s | in place / COPY | raw COPY rows/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for m in &measured {
        println!("{}", m.rebuild_row());
    }
    Ok(())
}
