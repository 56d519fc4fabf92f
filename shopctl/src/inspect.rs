//! Console inspection against any Kafka-compatible broker, without kcat: `tail` follows a
//! topic, `read` prints one aggregate's events. Both show each record's place, key, headers
//! and pretty-printed value (`--json`: one JSON line each), with sealed personal fields
//! opened when Postgres holds their keys (see [`view::Opener`]).

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::bail;
use clap::Args;
use event_store::partitioner::partition_for;
use event_store::scan::{self, LogScan, Range};
use schemas::catalog::SERVICES;

use crate::{connect, replay, view};

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The topic, without TOPIC_PREFIX: `orders.events` (or just `orders`), `deadletters`,
    /// `users.commands`, ...
    pub topic: String,
    /// Start this many records back in each partition (default: only records written from
    /// now on).
    #[arg(long, conflicts_with = "from_beginning")]
    pub last: Option<u32>,
    /// Start at the first record of each partition.
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop at the current end instead of waiting for more.
    #[arg(long)]
    pub no_follow: bool,
}

#[derive(Debug, Args)]
pub struct ReadArgs {
    /// Whose log: `user`, `order`, `payment`, `notification`, `user-email` (or the service:
    /// `users`, `orders`, ...).
    pub aggregate_type: String,
    /// The aggregate id (the record key).
    pub id: String,
}

pub async fn tail(args: TailArgs, json: bool) -> anyhow::Result<()> {
    let infra = connect::infrastructure()?;
    let known = connect::topic_partitions(&infra).await?;
    let topic = replay::resolve_topic(&infra, &known, &args.topic)?;
    let partitions = connect::partitions_of(&known, &topic)?;
    let marks = scan::watermarks_of(&infra.kafka, &topic, (0..partitions).collect()).await?;
    let highs: BTreeMap<i32, i64> = marks.iter().map(|(p, (_, high))| (*p, *high)).collect();
    // `--last N` counts records, not offsets (transaction markers take offsets too).
    let lasts = match args.last {
        Some(n) if !args.from_beginning => {
            scan::last_records(&infra.kafka, &topic, &highs, n as usize).await?
        }
        _ => BTreeMap::new(),
    };
    let mut ranges = BTreeMap::new();
    for (partition, (low, high)) in marks {
        let from = match (args.from_beginning, args.last) {
            (true, _) => low,
            (false, Some(_)) => lasts.get(&partition).copied().flatten().unwrap_or(low),
            (false, None) => high,
        };
        let to = args.no_follow.then_some(high);
        ranges.insert(partition, Range { from, to });
    }
    let mut opener = view::Opener::connect(&infra).await;
    let mut log = LogScan::open(&infra.kafka, &topic, &ranges)?;
    while !log.is_done() {
        let records = log.next_batch(500, Duration::from_millis(500)).await?;
        let values = opener.values(&records).await;
        let mut out = std::io::stdout().lock();
        for (record, value) in records.iter().zip(values) {
            if write!(out, "{}", line(&view::render(record, value, json)))
                .and_then(|()| out.flush())
                .is_err()
            {
                return Ok(());
            }
        }
    }
    Ok(())
}

pub async fn read(args: ReadArgs, json: bool) -> anyhow::Result<()> {
    let service = service_of(&args.aggregate_type)?;
    let infra = connect::infrastructure()?;
    let known = connect::topic_partitions(&infra).await?;
    let topic = infra.topics.events(service);
    let partition = partition_for(&args.id, connect::partitions_of(&known, &topic)?);
    let end = scan::watermarks(&infra.kafka, &topic, partition).await?.1;
    let ranges = BTreeMap::from([(
        partition,
        Range {
            from: 0,
            to: Some(end),
        },
    )]);
    let mut opener = view::Opener::connect(&infra).await;
    let mut log = LogScan::open(&infra.kafka, &topic, &ranges)?;
    let mut found = 0usize;
    while !log.is_done() {
        let mut records = log.next_batch(1000, Duration::from_millis(500)).await?;
        records.retain(|r| r.key_text().as_deref() == Some(args.id.as_str()));
        found += records.len();
        let values = opener.values(&records).await;
        let mut out = std::io::stdout().lock();
        for (record, value) in records.iter().zip(values) {
            if write!(out, "{}", line(&view::render(record, value, json))).is_err() {
                return Ok(());
            }
        }
    }
    if found == 0 {
        bail!(
            "no records of {} {} in {topic} (partition {partition})",
            args.aggregate_type,
            args.id
        );
    }
    Ok(())
}

/// `text` ending in exactly one newline.
fn line(text: &str) -> String {
    format!("{}\n", text.trim_end_matches('\n'))
}

/// The service whose log holds aggregates of `kind`.
pub fn service_of(kind: &str) -> anyhow::Result<&'static str> {
    let service = match kind {
        "user" => "users",
        "user-email" => "user-emails",
        "order" => "orders",
        "payment" => "payments",
        "notification" => "notifications",
        other => match SERVICES.iter().find(|s| **s == other) {
            Some(s) => s,
            None => bail!(
                "no aggregate type {other:?} (one of: user, user-email, order, payment, notification)"
            ),
        },
    };
    Ok(service)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aggregate_types_and_service_names_name_a_log() {
        assert_eq!(service_of("order").ok(), Some("orders"));
        assert_eq!(service_of("orders").ok(), Some("orders"));
        assert_eq!(service_of("user-email").ok(), Some("user-emails"));
        assert!(service_of("basket").is_err());
    }
}
