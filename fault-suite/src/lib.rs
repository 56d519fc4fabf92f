//! The fault suite: the three services as processes on a private Apache Kafka node and a
//! private Postgres, a steady load of users, orders and sagas, and meanwhile SIGKILLs of
//! every service, broker restarts and Postgres immediate shutdowns; then an audit of what
//! the README promises (see `audit`). Exit 0 when every check passes, 1 otherwise.
//!
//! ```text
//! fault-suite run            the full run (20 SIGKILLs of each service, 10 minutes)
//! fault-suite run --short    the CI variant
//! fault-suite run --instances 2 --partitions 8
//!                            the same with two instances of every service
//! fault-suite scale-out      two instances of every service: the split, capacity with
//!                            two and with one, the takeover when one dies, the audit
//! fault-suite soak           30 minutes at half capacity, no faults: memory, p99 and
//!                            the sagas watched throughout, then the audit
//! ```
//!
//! `./dev faults` builds it in release mode and runs it; `src/main.rs` is a thin binary
//! over [`run_cli`].

mod audit;
mod faults;
mod fleet;
mod load;
mod overload;
mod scale_out;
mod soak;
mod stand;
mod webhooks;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand};
use projections::rebuild::Rebuild;

use audit::{Audit, Evidence};
use faults::{Plan, Targets};
use fleet::{Fleet, ServiceName};
use load::{Kind, Ledger, Load, Outcome};
use stand::{API_KEY, LogFolder, RATE_UNLIMITED, Stand};

/// How long the sagas of the last orders may take to end once the load stopped.
const SETTLE_WITHIN: Duration = Duration::from_secs(120);

/// How long the readers may take, once the sagas settled, to store their last batches (a
/// partition of a killed instance waits for its session to expire, then a rebalance).
const CATCH_UP_WITHIN: Duration = Duration::from_secs(60);

#[derive(Debug, Parser)]
#[command(
    name = "fault-suite",
    about = "Crash the shop under load, then audit it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the load and the faults, then the audit.
    Run(RunArgs),
    /// Measure the command API's capacity, then offer ten times as much.
    Overload(OverloadArgs),
    /// Two instances of every service: how partitions split, capacity with two instances
    /// and with one, and the takeover when one instance of each service dies.
    ScaleOut(ScaleOutArgs),
    /// Run the shop at half its capacity for a long time, no faults: memory, p99 and the
    /// sagas watched throughout, then the audit.
    Soak(SoakArgs),
    /// Run one service (how the suite starts its processes).
    #[command(hide = true)]
    Serve {
        #[arg(value_enum)]
        service: ServiceName,
        /// Which run started it (lets a watchdog find the run's processes).
        #[arg(long)]
        stand: Option<String>,
    },
}

#[derive(Debug, Args)]
struct RunArgs {
    /// The CI variant: 60 s of load, 4 SIGKILLs of each service, one broker restart, one
    /// Postgres restart (overrides the counts below).
    #[arg(long)]
    short: bool,
    /// Seconds of load (the faults fall within them).
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u64).range(10..))]
    seconds: u64,
    /// SIGKILLs of each service.
    #[arg(long, default_value_t = 20)]
    kills: u32,
    /// Broker restarts (SIGKILL, then a start on the same storage).
    #[arg(long, default_value_t = 2)]
    broker_restarts: u32,
    /// Postgres immediate shutdowns and restarts.
    #[arg(long, default_value_t = 2)]
    postgres_restarts: u32,
    /// Orders placed per second (users, cancellations and deactivations follow from them).
    #[arg(long, default_value_t = 5.0)]
    orders_per_second: f64,
    /// Partitions of every event topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,
    /// Instances of every service (requests go to the command API's at random; each
    /// SIGKILL hits one instance).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=4))]
    instances: u64,
    /// Where the services' logs go (default: a fresh folder under the temp dir).
    #[arg(long)]
    logs: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct ScaleOutArgs {
    /// Partitions of every event topic.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(i32).range(2..=64))]
    partitions: i32,
    /// Seconds of each capacity measurement.
    #[arg(long, default_value_t = 15)]
    measure_seconds: u64,
    /// Orders per second of the steady load the audit checks.
    #[arg(long, default_value_t = 5.0)]
    orders_per_second: f64,
}

#[derive(Debug, Args)]
struct SoakArgs {
    /// Minutes of load.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    minutes: u64,
    /// Orders placed per second (users, cancellations and deactivations follow from them).
    /// The default is about half of the command path's capacity with the sagas behind it,
    /// as the saga bench measures it on two cores (69 to 81 orders/s; BENCHMARKS.md,
    /// "Order saga").
    #[arg(long, default_value_t = 40.0)]
    orders_per_second: f64,
    /// Partitions of every event topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,
    /// Seconds between two readings of the services' memory and the open sagas.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
    sample_seconds: u64,
    /// Windows the run is cut into to compare its p99 and memory over time.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(2..=60))]
    windows: u32,
    /// Where the services' logs go (default: a fresh folder under the temp dir).
    #[arg(long)]
    logs: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct OverloadArgs {
    /// How many times the measured capacity to offer.
    #[arg(long, default_value_t = 10.0)]
    factor: f64,
    /// Seconds of overload.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// Seconds of the capacity measurement before it.
    #[arg(long, default_value_t = 15)]
    measure_seconds: u64,
    /// Partitions of every event topic.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(i32).range(1..=64))]
    partitions: i32,
}

impl RunArgs {
    /// The run in one line: load, faults, partitions.
    fn describe(&self, plan: &Plan) -> String {
        format!(
            "{} s of load at {} orders/s; {} SIGKILLs of each service, {} broker restarts, {} Postgres restarts; {} partitions per topic",
            plan.duration.as_secs(),
            self.orders_per_second,
            plan.kills_per_service,
            plan.broker_restarts,
            plan.postgres_restarts,
            self.partitions
        )
    }

    fn plan(&self) -> Plan {
        if self.short {
            Plan {
                kills_per_service: 4,
                broker_restarts: 1,
                postgres_restarts: 1,
                duration: Duration::from_secs(60),
            }
        } else {
            Plan {
                kills_per_service: self.kills,
                broker_restarts: self.broker_restarts,
                postgres_restarts: self.postgres_restarts,
                duration: Duration::from_secs(self.seconds),
            }
        }
    }
}

/// Parses the command line and runs what it names; the binary's whole `main`.
pub async fn run_cli() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { service, .. } => serve(service).await,
        Command::Overload(args) => verdict("overload", overload(args).await),
        Command::ScaleOut(args) => verdict("scale-out", scale_out(args).await),
        Command::Soak(args) => verdict(
            "soak",
            soak::run(soak::Soak {
                minutes: args.minutes,
                orders_per_second: args.orders_per_second,
                partitions: args.partitions,
                sample_seconds: args.sample_seconds,
                windows: args.windows,
                logs: args.logs,
            })
            .await,
        ),
        Command::Run(args) => verdict("fault suite", run(args).await),
    }
}

/// The exit code of a run: success when every check passed.
fn verdict(what: &str, passed: anyhow::Result<bool>) -> ExitCode {
    match passed {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            println!("{what}: FAILED (see the checks above)");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("fault-suite: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn scale_out(args: ScaleOutArgs) -> anyhow::Result<bool> {
    scale_out::run(scale_out::ScaleOut {
        partitions: args.partitions,
        measure_seconds: args.measure_seconds,
        orders_per_second: args.orders_per_second,
    })
    .await
}

async fn overload(args: OverloadArgs) -> anyhow::Result<bool> {
    println!(
        "overload: {}x the measured capacity of the command API for {} s",
        args.factor, args.seconds
    );
    let logs = LogFolder::new("overload", None)?;
    let stand = Stand::up(args.partitions, 1, &logs.path, RATE_UNLIMITED).await?;
    let passed = overload::run(
        &stand,
        overload::Overload {
            factor: args.factor,
            seconds: args.seconds,
            measure_seconds: args.measure_seconds,
        },
    )
    .await?;
    drop(stand);
    logs.finish(passed);
    Ok(passed)
}

async fn serve(service: ServiceName) -> ExitCode {
    use service_runtime::run_binary;
    match service {
        ServiceName::CommandApi => {
            run_binary(
                command_api::NAME,
                command_api::Config::from_env,
                command_api::Config::infrastructure,
                command_api::build,
            )
            .await
        }
        ServiceName::Projections => {
            run_binary(
                projections::NAME,
                projections::Config::from_env,
                projections::Config::infrastructure,
                projections::build,
            )
            .await
        }
        ServiceName::SagaOrchestrator => {
            run_binary(
                saga_orchestrator::NAME,
                saga_orchestrator::Config::from_env,
                saga_orchestrator::Config::infrastructure,
                saga_orchestrator::build,
            )
            .await
        }
    }
}

/// Saga state and document by order id.
type Sagas = BTreeMap<String, (String, serde_json::Value)>;

async fn sagas(pool: &sqlx::PgPool) -> anyhow::Result<Sagas> {
    let rows: Vec<(uuid::Uuid, String, serde_json::Value)> =
        sqlx::query_as("SELECT order_id, state, document FROM saga.sagas")
            .fetch_all(pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(id, s, d)| (id.to_string(), (s, d)))
        .collect())
}

/// Whether the orchestrator has taken in every event of the topics it reads and carried
/// out every step it issued: only then are the saga states final for the audit (a late
/// cancellation may still turn a completed saga into a compensating one).
async fn orchestrator_idle(
    pool: &sqlx::PgPool,
    settings: &event_store::KafkaSettings,
    topics: &event_store::TopicNames,
) -> anyhow::Result<bool> {
    let pending: i64 = sqlx::query_scalar("SELECT count(*) FROM saga.outbox WHERE done_at IS NULL")
        .fetch_one(pool)
        .await?;
    let stored: Vec<(String, i32, i64)> =
        sqlx::query_as("SELECT topic, partition, next_offset FROM saga.checkpoints")
            .fetch_all(pool)
            .await?;
    let stored: BTreeMap<(String, i32), i64> =
        stored.into_iter().map(|(t, p, o)| ((t, p), o)).collect();
    for service in ["users", "orders", "payments", "notifications"] {
        let topic = topics.events(service);
        let ends = event_store::scan::settled_ends(settings, &topic).await?;
        for (partition, end) in event_store::scan::record_ends(settings, &topic, &ends).await? {
            if end
                > stored
                    .get(&(topic.clone(), partition))
                    .copied()
                    .unwrap_or(0)
            {
                return Ok(false);
            }
        }
    }
    // A command the outbox sent may not have reached its writer yet.
    for service in ["orders", "payments", "notifications"] {
        let topic = topics.commands(service);
        let ends = event_store::scan::settled_ends(settings, &topic).await?;
        let group = topics.writers_group(service);
        let partitions = i32::try_from(ends.len()).unwrap_or(0);
        let done = event_store::scan::committed(settings, &group, &topic, partitions).await?;
        if ends
            .iter()
            .any(|(p, end)| *end > done.get(p).copied().flatten().unwrap_or(0))
        {
            return Ok(false);
        }
    }
    Ok(pending == 0)
}

/// Waits until the saga of every accepted order has ended and the orchestrator is idle
/// (or the bound passed).
async fn settle(
    pool: &sqlx::PgPool,
    (settings, topics): (&event_store::KafkaSettings, &event_store::TopicNames),
    orders: &[String],
) -> anyhow::Result<Sagas> {
    let deadline = Instant::now() + SETTLE_WITHIN;
    loop {
        let idle = orchestrator_idle(pool, settings, topics).await;
        let states = sagas(pool).await;
        let (idle, states) = match (idle, states) {
            (Ok(idle), Ok(states)) => (idle, states),
            (Err(e), _) | (_, Err(e)) if Instant::now() > deadline => return Err(e),
            _ => {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let open = orders
            .iter()
            .filter(|o| {
                !matches!(
                    states.get(*o).map(|(s, _)| s.as_str()),
                    Some("completed" | "compensated")
                )
            })
            .count();
        if (open == 0 && idle) || Instant::now() > deadline {
            return Ok(states);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn run(args: RunArgs) -> anyhow::Result<bool> {
    let plan = args.plan();
    let began = Instant::now();
    println!("fault suite: {}", args.describe(&plan));
    let logs = LogFolder::new("faults", args.logs.clone())?;

    let instances = usize::try_from(args.instances).unwrap_or(1);
    let stand = Stand::up(args.partitions, instances, &logs.path, RATE_UNLIMITED).await?;
    let ready = began.elapsed().as_secs_f64();
    println!("  {instances} instance(s) of each service ready after {ready:.1} s");
    let command_api = stand.urls(ServiceName::CommandApi);
    let instances = stand.all_urls();
    let Stand {
        postgres,
        broker,
        settings,
        topics,
        deliveries,
        fleet,
        ..
    } = stand;

    let supervisor = supervise(Arc::clone(&fleet));
    let ledger = Ledger::default();
    let load = tokio::spawn(
        Load {
            command_api,
            api_key: API_KEY.to_owned(),
            orders_per_second: args.orders_per_second,
        }
        .run(ledger.clone(), tokio::time::sleep(plan.duration)),
    );
    let mut targets = Targets {
        fleet: Arc::clone(&fleet),
        broker,
        postgres: Arc::clone(&postgres),
        instances,
        broker_restarts: Vec::new(),
    };
    faults::inflict(&mut targets, &faults::schedule(&plan)).await?;
    load.await?;
    let passed = conclude(
        &Finished {
            postgres: &postgres,
            settings: &settings,
            topics: &topics,
            deliveries: &deliveries,
            ledger: &ledger,
            fleet: &fleet,
            partitions: args.partitions,
            broker_restarts: &targets.broker_restarts,
        },
        began,
    )
    .await?;
    supervisor.abort();
    drop((targets, fleet));
    logs.finish(passed);
    Ok(passed)
}

/// Starts again, every half second, the instances that stopped by themselves.
fn supervise(fleet: Arc<Fleet>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            match fleet.revive_exited() {
                Ok(revived) => {
                    for (instance, status) in revived {
                        println!(
                            "            {} stopped by itself ({status}); started again",
                            fleet::label(instance)
                        );
                    }
                }
                Err(e) => println!("            supervisor: {e}"),
            }
        }
    })
}

/// What a run leaves for the audit, and where to look.
struct Finished<'a> {
    postgres: &'a test_support::PrivatePostgres,
    settings: &'a event_store::KafkaSettings,
    topics: &'a event_store::TopicNames,
    deliveries: &'a webhooks::Deliveries,
    ledger: &'a Ledger,
    fleet: &'a Fleet,
    partitions: i32,
    broker_restarts: &'a [faults::BrokerRestart],
}

/// Once the load stopped: what it got, the sagas settled, then the audit; whether every
/// check passed.
async fn conclude(run: &Finished<'_>, began: Instant) -> anyhow::Result<bool> {
    let requests = run.ledger.requests();
    summarize(&requests, run.fleet);
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(6)
        .acquire_timeout(Duration::from_secs(10))
        .connect(&run.postgres.url())
        .await?;
    let orders: Vec<String> = requests
        .iter()
        .filter(|r| r.kind == Kind::PlaceOrder)
        .filter_map(|r| match &r.outcome {
            Outcome::Accepted { id, .. } => Some(id.clone()),
            _ => None,
        })
        .collect();
    let settling = Instant::now();
    let sagas = settle(&pool, (run.settings, run.topics), &orders).await?;
    println!(
        "  sagas settled {:.1} s after the load",
        settling.elapsed().as_secs_f64()
    );
    println!("audit");
    let passed = audit_run(run, &pool, &requests, &sagas).await?;
    println!(
        "fault suite: {} in {:.0} s",
        if passed {
            "all checks passed"
        } else {
            "checks failed"
        },
        began.elapsed().as_secs_f64()
    );
    Ok(passed)
}

/// Every check of the audit on what the run left (the log, the dead letters, the
/// webhooks received, the sagas, the read models); whether all passed.
async fn audit_run(
    run: &Finished<'_>,
    pool: &sqlx::PgPool,
    requests: &[load::Request],
    sagas: &Sagas,
) -> anyhow::Result<bool> {
    let (settings, topics) = (run.settings, run.topics);
    let (events, ends) = audit::read_log(settings, topics).await?;
    let dead_letters = audit::read_topic(settings, &topics.dead_letters())
        .await?
        .len();
    let deliveries = run.deliveries.all();
    let evidence = Evidence {
        events: &events,
        requests,
        sagas,
        deliveries: &deliveries,
        dead_letters,
    };
    let mut audit = Audit::default();
    audit::check_commands(&mut audit, &evidence);
    audit::check_log(&mut audit, &evidence);
    audit::check_sagas(&mut audit, &evidence);
    audit::check_webhooks(&mut audit, &evidence);
    if !run.broker_restarts.is_empty() {
        audit::check_broker_restarts(&mut audit, run.broker_restarts);
    }
    let rebuild = Rebuild {
        pool: pool.clone(),
        kafka: settings.clone(),
        topics: topics.clone(),
        partitions: run.partitions,
        batch_max: 2_000,
        restart: true,
    };
    audit::check_readers_caught_up(&mut audit, (pool, topics), &ends, CATCH_UP_WITHIN).await;
    audit::check_read_models(&mut audit, &rebuild).await;
    audit.print();
    Ok(audit.passed())
}

/// What the load was told, and what the services went through.
fn summarize(requests: &[load::Request], fleet: &Fleet) {
    let mut by_kind: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    for r in requests {
        let slot = match r.outcome {
            Outcome::Accepted { .. } => 0,
            Outcome::Refused { .. } => 1,
            Outcome::Unknown { .. } => 2,
        };
        by_kind.entry(format!("{:?}", r.kind)).or_default()[slot] += 1;
    }
    println!("load");
    for (kind, [accepted, refused, unknown]) in by_kind {
        println!(
            "  {kind:<15} {accepted:>6} accepted {refused:>5} refused {unknown:>3} unanswered"
        );
    }
    let retried = requests.iter().filter(|r| r.retries > 0).count();
    let most = requests.iter().map(|r| r.retries).max().unwrap_or(0);
    println!("  {retried} requests needed retries (at most {most})");
    for (service, tally) in fleet.tallies() {
        println!(
            "  {:<18} {} SIGKILLs, {} stops on its own",
            service.as_str(),
            tally.kills,
            tally.own_exits
        );
    }
}
