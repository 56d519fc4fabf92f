//! `shopctl dead-letters list | retry | skip`: the records each read model parked (a poison
//! event, an unreadable record or a version gap, and what waits behind it), and the two
//! ways an operator moves an aggregate on.

use anyhow::Context;
use clap::Subcommand;
use projections::projector::Schema;
use projections::projector::operator::{self, ParkedRecord, RetryReport};
use projections::{Caller, ParkedAction, READ_MODELS};
use serde_json::json;

use crate::connect;

#[derive(Debug, Subcommand)]
pub enum DeadLettersCommand {
    /// List parked records, oldest first.
    List {
        /// Only this read model (users, orders, payments, notifications, event_index).
        #[arg(long, value_parser = read_model())]
        read_model: Option<String>,
        /// Only this aggregate.
        #[arg(long)]
        aggregate: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
    },
    /// Apply an aggregate's parked records in order, as far as they now go.
    Retry {
        #[arg(value_parser = read_model())]
        read_model: String,
        aggregate: String,
    },
    /// Drop the record at the head of an aggregate's parked records, then retry the rest.
    Skip {
        #[arg(value_parser = read_model())]
        read_model: String,
        aggregate: String,
    },
}

/// shopctl reaches Postgres directly: whoever runs it is an operator, named in the audit
/// line (on stderr) by the login.
fn principal() -> String {
    format!(
        "shopctl:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    )
}

/// One of the read models, checked when the command line is parsed.
fn read_model() -> clap::builder::PossibleValuesParser {
    clap::builder::PossibleValuesParser::new(READ_MODELS)
}

pub async fn run(command: DeadLettersCommand, json: bool) -> anyhow::Result<()> {
    let infra = connect::infrastructure()?;
    let pool = connect::postgres(&infra, 2).await?;
    let principal = principal();
    let caller = Caller {
        role: "operator",
        principal: &principal,
    };
    match command {
        DeadLettersCommand::List {
            read_model,
            aggregate,
            limit,
        } => {
            list(
                &pool,
                read_model.as_deref(),
                aggregate.as_deref(),
                limit,
                json,
            )
            .await?
        }
        DeadLettersCommand::Retry {
            read_model,
            aggregate,
        } => {
            let (_, report) = projections::act_on_parked(
                &pool,
                &read_model,
                &aggregate,
                ParkedAction::Retry,
                caller,
            )
            .await?;
            print_report(&read_model, &aggregate, None, &report, json);
        }
        DeadLettersCommand::Skip {
            read_model,
            aggregate,
        } => {
            let (skipped, report) = projections::act_on_parked(
                &pool,
                &read_model,
                &aggregate,
                ParkedAction::Skip,
                caller,
            )
            .await?;
            print_report(&read_model, &aggregate, skipped.as_ref(), &report, json);
        }
    }
    Ok(())
}

/// Prints the parked records of one read model, or of all.
async fn list(
    pool: &sqlx::PgPool,
    read_model: Option<&str>,
    aggregate: Option<&str>,
    limit: i64,
    json: bool,
) -> anyhow::Result<()> {
    let models: Vec<&str> = match read_model {
        Some(name) => vec![name],
        None => READ_MODELS.to_vec(),
    };
    let mut total = 0;
    for model in models {
        let parked = operator::list(pool, &Schema::live(model), aggregate, limit)
            .await
            .with_context(|| format!("listing the parked records of {model}"))?;
        total += parked.len();
        for record in parked {
            print_parked(model, &record, json);
        }
    }
    if !json && total == 0 {
        println!("nothing parked");
    }
    Ok(())
}

fn print_parked(model: &str, r: &ParkedRecord, json: bool) {
    if json {
        println!("{}", json!({ "read_model": model, "record": r }));
    } else {
        println!(
            "{model:<14} {} v{} {} {}/{}@{} parked {}: {}",
            r.aggregate_id,
            r.version.map_or("?".into(), |v| v.to_string()),
            r.event_type.as_deref().unwrap_or("(unreadable)"),
            r.topic,
            r.partition,
            r.offset,
            r.parked_at.to_rfc3339(),
            r.error
        );
    }
}

fn print_report(
    model: &str,
    aggregate: &str,
    skipped: Option<&ParkedRecord>,
    report: &RetryReport,
    json: bool,
) {
    if json {
        println!(
            "{}",
            json!({ "read_model": model, "aggregate": aggregate, "skipped": skipped, "report": report })
        );
        return;
    }
    if let Some(s) = skipped {
        println!(
            "skipped {}/{}@{} ({})",
            s.topic, s.partition, s.offset, s.error
        );
    }
    println!(
        "{model} {aggregate}: applied {}, dropped as duplicates {}, still parked {}",
        report.applied, report.dropped, report.still_parked
    );
    if let Some(reason) = &report.blocked_by {
        println!("blocked by: {reason}");
    }
}
