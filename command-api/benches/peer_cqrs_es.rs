//! The peer a Rust user would pick instead: cqrs-es with postgres-es (from crates.io),
//! against this event store, on the same workload in one run: register users, then place
//! orders that check their user, 64 concurrent callers each waiting for its outcome.
//!
//!     ./dev bench            (or, with SHOP_TEST_DATABASE_URL set: cargo bench -p command-api --bench peer_cqrs_es)
//!
//! Both sides run in this process without HTTP (the HTTP path has its own bench):
//! - ours: the command API's `User` and `Order` aggregates on event-store write models (a
//!   writer per partition, commands of one partition batched into one Kafka transaction),
//!   on a private Apache Kafka node; placing an order reads the user's state from its writer
//!   first, as `POST /v1/orders` does;
//! - theirs: the same decisions as cqrs-es aggregates, stored by postgres-es in its `events`
//!   table in the bench's own database on the same Postgres cluster; placing an order loads
//!   the user aggregate from the same store (a cqrs-es service), as its examples do.
//!
//! Each side writes the same events (one per command) and refuses an order of an unknown
//! user. The personal data of a registration is sealed before the clock starts on both sides.

use std::sync::Arc;
use std::time::Duration;

use command_api::domain::orders::Order;
use command_api::domain::users::{User, UserStatus};
use cqrs_es::event_sink::EventSink;
use cqrs_es::persist::PersistedEventStore;
use cqrs_es::{Aggregate, AggregateError, DomainEvent, EventStore};
use event_store::writer::host::{WriteModel, WriterConfig};
use event_store::writer::metrics::WriterMetrics;
use event_store::{KafkaSettings, TopicAdmin, TopicNames};
use postgres_es::{PostgresCqrs, PostgresEventRepository, postgres_cqrs};
use schemas::orders::{OrderLine, PlaceOrder};
use schemas::users::RegisterUser;
use schemas::{Command, CommandMeta, OrderId, UserId};
use serde::{Deserialize, Serialize};
use service_runtime::personal_data::{EmailIndex, SubjectKey};
use test_support::load::{Run, drive};
use tokio_util::sync::CancellationToken;

const PARTITIONS: i32 = 8;
const USERS: usize = 2_000;
const ORDERS: usize = 5_000;
const CONCURRENCY: usize = 64;
/// Commands of each kind each side runs before the clock starts, at full concurrency.
const WARM_UP: usize = 512;
/// Connections of the peer's pool: enough for every caller to hold one.
const PEER_POOL: u32 = 64;

// ---- the peer: the same decisions as cqrs-es aggregates ----

#[derive(Debug, thiserror::Error)]
enum PeerRejection {
    #[error("already registered")]
    AlreadyRegistered,
    #[error("unknown user")]
    UnknownUser,
    #[error("already placed")]
    AlreadyPlaced,
    #[error("the user store failed: {0}")]
    Store(String),
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PeerUser {
    registered: bool,
}

#[derive(Debug)]
enum PeerUserCommand {
    Register { name: String, email: String },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum PeerUserEvent {
    Registered { name: String, email: String },
}

impl DomainEvent for PeerUserEvent {
    fn event_type(&self) -> String {
        "UserRegistered".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

impl Aggregate for PeerUser {
    const TYPE: &'static str = "user";
    type Command = PeerUserCommand;
    type Event = PeerUserEvent;
    type Error = PeerRejection;
    type Services = ();

    async fn handle(
        &mut self,
        command: PeerUserCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), PeerRejection> {
        let PeerUserCommand::Register { name, email } = command;
        if self.registered {
            return Err(PeerRejection::AlreadyRegistered);
        }
        sink.write(PeerUserEvent::Registered { name, email }, self)
            .await;
        Ok(())
    }

    fn apply(&mut self, event: PeerUserEvent) {
        match event {
            PeerUserEvent::Registered { .. } => self.registered = true,
        }
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct PeerOrder {
    placed: bool,
}

#[derive(Debug)]
enum PeerOrderCommand {
    Place {
        user_id: String,
        lines: Vec<OrderLine>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
enum PeerOrderEvent {
    Placed {
        user_id: String,
        lines: Vec<OrderLine>,
        total_cents: u64,
    },
}

impl DomainEvent for PeerOrderEvent {
    fn event_type(&self) -> String {
        "OrderPlaced".into()
    }
    fn event_version(&self) -> String {
        "1".into()
    }
}

/// What an order's decision may consult: the users, from the same store.
struct Users(PersistedEventStore<PostgresEventRepository, PeerUser>);

impl Aggregate for PeerOrder {
    const TYPE: &'static str = "order";
    type Command = PeerOrderCommand;
    type Event = PeerOrderEvent;
    type Error = PeerRejection;
    type Services = Users;

    async fn handle(
        &mut self,
        command: PeerOrderCommand,
        users: &Users,
        sink: &EventSink<Self>,
    ) -> Result<(), PeerRejection> {
        let PeerOrderCommand::Place { user_id, lines } = command;
        if self.placed {
            return Err(PeerRejection::AlreadyPlaced);
        }
        let mut user = users
            .0
            .load_aggregate(&user_id)
            .await
            .map_err(|e| PeerRejection::Store(e.to_string()))?;
        if !cqrs_es::AggregateContext::aggregate(&mut user).registered {
            return Err(PeerRejection::UnknownUser);
        }
        let total_cents = lines
            .iter()
            .map(|l| u64::from(l.quantity) * l.unit_price_cents)
            .sum();
        sink.write(
            PeerOrderEvent::Placed {
                user_id,
                lines,
                total_cents,
            },
            self,
        )
        .await;
        Ok(())
    }

    fn apply(&mut self, event: PeerOrderEvent) {
        match event {
            PeerOrderEvent::Placed { .. } => self.placed = true,
        }
    }
}

/// postgres-es's table of events (the shape its queries expect).
const PEER_EVENTS_TABLE: &str = "CREATE TABLE events (
    aggregate_type text NOT NULL,
    aggregate_id text NOT NULL,
    sequence bigint CHECK (sequence >= 0) NOT NULL,
    event_type text NOT NULL,
    event_version text NOT NULL,
    payload json NOT NULL,
    metadata json NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, sequence)
)";

fn lines() -> Vec<OrderLine> {
    vec![OrderLine {
        sku: "SKU-1".into(),
        quantity: 2,
        unit_price_cents: 1250,
    }]
}

/// A registration as the command API issues it: name and email sealed, the claim's id.
fn registration(key: &SubjectKey, index: &EmailIndex, i: usize) -> RegisterUser {
    let user_id = UserId::new();
    let email = format!("user{i}@example.com");
    RegisterUser {
        user_id,
        name: key.seal(user_id.as_uuid(), &format!("User {i}")),
        email: key.seal(user_id.as_uuid(), &email),
        claim_id: Some(index.claim_id(&email)),
        claim: None,
    }
}

async fn ours(brokers: &str) -> anyhow::Result<(Run, Run)> {
    let settings = KafkaSettings::new(brokers);
    let topics = TopicNames::new("");
    TopicAdmin::new(&settings)?
        .create(&topics.for_services(&["users", "orders"], PARTITIONS), 1)
        .await?;
    let stop = CancellationToken::new();
    let (users, users_runtime) = WriteModel::<User>::new(
        WriterConfig::new(settings.clone(), topics.clone(), PARTITIONS),
        WriterMetrics::unregistered("users"),
    );
    let (orders, orders_runtime) = WriteModel::<Order>::new(
        WriterConfig::new(settings, topics, PARTITIONS),
        WriterMetrics::unregistered("orders"),
    );
    let runtimes = [
        tokio::spawn(users_runtime.run(stop.clone())),
        tokio::spawn(orders_runtime.run(stop.clone())),
    ];
    let (key, index) = (SubjectKey::generate(), EmailIndex::development());
    let registrations: Arc<Vec<RegisterUser>> =
        Arc::new((0..USERS).map(|i| registration(&key, &index, i)).collect());
    // Warm-up at full concurrency: every partition of both models owned, its producer
    // ready and its first transactions done before the clock starts.
    let warm: Arc<Vec<RegisterUser>> = Arc::new(
        (0..WARM_UP)
            .map(|i| registration(&key, &index, USERS + i))
            .collect(),
    );
    {
        let (users, orders, warm) = (users.clone(), orders.clone(), Arc::clone(&warm));
        drive(WARM_UP, CONCURRENCY, move |i| {
            let (users, orders, warm) = (users.clone(), orders.clone(), Arc::clone(&warm));
            async move {
                let registered = users.execute(command_of(warm[i].clone())).await;
                assert!(registered.expect("a warm-up registration").is_accepted());
                let place = PlaceOrder {
                    order_id: OrderId::new(),
                    user_id: warm[i].user_id,
                    currency: "EUR".parse().expect("EUR"),
                    lines: lines(),
                };
                let placed = orders.execute(command_of(place)).await;
                assert!(placed.expect("a warm-up order").is_accepted());
            }
        })
        .await;
    }
    let register = {
        let (users, registrations) = (users.clone(), Arc::clone(&registrations));
        drive(USERS, CONCURRENCY, move |i| {
            let (users, registrations) = (users.clone(), Arc::clone(&registrations));
            async move {
                let outcome = users
                    .execute(command_of(registrations[i].clone()))
                    .await
                    .expect("a registration");
                assert!(outcome.is_accepted(), "{outcome:?}");
            }
        })
        .await
    };
    let place = {
        let registrations = Arc::clone(&registrations);
        drive(ORDERS, CONCURRENCY, move |i| {
            let (users, orders, registrations) =
                (users.clone(), orders.clone(), Arc::clone(&registrations));
            async move {
                let user_id = registrations[i % USERS].user_id;
                let (_, user) = users
                    .state_of(&user_id.to_string())
                    .await
                    .expect("the user's state");
                assert!(matches!(user.status, UserStatus::Active { .. }));
                let place = PlaceOrder {
                    order_id: OrderId::new(),
                    user_id,
                    currency: "EUR".parse().expect("EUR"),
                    lines: lines(),
                };
                let outcome = orders.execute(command_of(place)).await.expect("an order");
                assert!(outcome.is_accepted(), "{outcome:?}");
            }
        })
        .await
    };
    stop.cancel();
    for runtime in runtimes {
        tokio::time::timeout(Duration::from_secs(30), runtime).await??;
    }
    Ok((register, place))
}

fn command_of<C, P: Into<C>>(payload: P) -> Command<C> {
    Command {
        meta: CommandMeta::new("/bench"),
        payload: payload.into(),
    }
}

async fn theirs(database_url: &str) -> anyhow::Result<(Run, Run)> {
    let pool = sqlx_08_pool(database_url).await?;
    sqlx_08::query(PEER_EVENTS_TABLE).execute(&pool).await?;
    let users: Arc<PostgresCqrs<PeerUser>> = Arc::new(postgres_cqrs(pool.clone(), vec![], ()));
    let orders: Arc<PostgresCqrs<PeerOrder>> = Arc::new(postgres_cqrs(
        pool.clone(),
        vec![],
        Users(PersistedEventStore::new_event_store(
            PostgresEventRepository::new(pool),
        )),
    ));
    let ids: Arc<Vec<String>> = Arc::new((0..USERS).map(|_| UserId::new().to_string()).collect());
    // The same warm-up: every connection of the pool open, both aggregates written.
    {
        let (users, orders) = (Arc::clone(&users), Arc::clone(&orders));
        drive(WARM_UP, CONCURRENCY, move |i| {
            let (users, orders) = (Arc::clone(&users), Arc::clone(&orders));
            async move {
                let user = UserId::new().to_string();
                let command = PeerUserCommand::Register {
                    name: format!("Warm {i}"),
                    email: format!("warm{i}@example.com"),
                };
                users
                    .execute(&user, command)
                    .await
                    .expect("a warm-up registration");
                let place = PeerOrderCommand::Place {
                    user_id: user,
                    lines: lines(),
                };
                let placed = orders.execute(&OrderId::new().to_string(), place).await;
                if let Err(e) = placed {
                    panic!("a warm-up order: {}", describe(&e));
                }
            }
        })
        .await;
    }
    let register = {
        let (users, ids) = (Arc::clone(&users), Arc::clone(&ids));
        drive(USERS, CONCURRENCY, move |i| {
            let (users, ids) = (Arc::clone(&users), Arc::clone(&ids));
            async move {
                let command = PeerUserCommand::Register {
                    name: format!("User {i}"),
                    email: format!("user{i}@example.com"),
                };
                users
                    .execute(&ids[i], command)
                    .await
                    .expect("a registration");
            }
        })
        .await
    };
    let place = drive(ORDERS, CONCURRENCY, move |i| {
        let (orders, ids) = (Arc::clone(&orders), Arc::clone(&ids));
        async move {
            let command = PeerOrderCommand::Place {
                user_id: ids[i % USERS].clone(),
                lines: lines(),
            };
            let placed = orders.execute(&OrderId::new().to_string(), command).await;
            if let Err(e) = placed {
                panic!("an order: {}", describe(&e));
            }
        }
    })
    .await;
    Ok((register, place))
}

fn describe(e: &AggregateError<PeerRejection>) -> String {
    e.to_string()
}

async fn sqlx_08_pool(database_url: &str) -> anyhow::Result<sqlx_08::PgPool> {
    Ok(sqlx_08::postgres::PgPoolOptions::new()
        .max_connections(PEER_POOL)
        .min_connections(PEER_POOL)
        .connect(database_url)
        .await?)
}

fn row(path: &str, run: &Run) -> String {
    let (p50, p99) = run.percentiles();
    format!("| {path} | {:.0} | {p50:.2} | {p99:.2} |", run.per_second)
}

fn verdict(what: &str, ours: &Run, theirs: &Run) -> String {
    let ((_, our_p99), (_, their_p99)) = (ours.percentiles(), theirs.percentiles());
    format!(
        "{what}: {:.2}x their commands/s, p99 {:+.2} ms against theirs (goal: ahead on both: {})",
        ours.per_second / theirs.per_second,
        our_p99 - their_p99,
        if ours.per_second > theirs.per_second && our_p99 < their_p99 {
            "met"
        } else {
            "not met"
        }
    )
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let env = test_support::TestEnv::new().await;
    let broker = test_support::PrivateBroker::start().await;
    let (our_register, our_place) = ours(&broker.brokers).await?;
    let (their_register, their_place) = theirs(&env.database_url).await?;
    println!(
        "{USERS} registrations, then {ORDERS} orders that check their user; {CONCURRENCY} concurrent callers each waiting for its outcome"
    );
    println!("| path | commands/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!(
        "{}",
        row(
            "register: this event store (Apache Kafka, 8 partitions)",
            &our_register
        )
    );
    println!(
        "{}",
        row(
            "register: cqrs-es 0.5 + postgres-es 0.5 (Postgres)",
            &their_register
        )
    );
    println!(
        "{}",
        row(
            "place order: this event store (Apache Kafka, 8 partitions)",
            &our_place
        )
    );
    println!(
        "{}",
        row(
            "place order: cqrs-es 0.5 + postgres-es 0.5 (Postgres)",
            &their_place
        )
    );
    println!();
    println!("{}", verdict("register", &our_register, &their_register));
    println!("{}", verdict("place order", &our_place, &their_place));
    Ok(())
}
