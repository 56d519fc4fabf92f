//! `shopctl replay`: a slice of the log as JSON lines, one record per line, filtered by
//! topic, aggregate, event type, time range and correlation id; `--follow` keeps tailing.
//!
//! The scan is as narrow as the filter allows: an aggregate's records sit in one
//! partition (the partitioner), so only that one is read; `--from` starts each partition
//! at the first record written at that time (the broker's time index, then filtered
//! exactly). Records of one partition print in log order; partitions and topics are read
//! side by side, so their records interleave.

pub mod filter;

use std::collections::BTreeMap;
use std::io::Write;

use anyhow::bail;
use chrono::{DateTime, Utc};
use clap::Args;
use event_store::KafkaSettings;
use event_store::partitioner::partition_for;
use event_store::scan::{self, LogScan, Range, ScannedRecord};
use schemas::catalog::SERVICES;
use service_runtime::Infrastructure;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{connect, view};
pub use filter::Filter;

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// A topic to read, without TOPIC_PREFIX (`orders.events`, or just `orders`); repeat for
    /// several. Default: every event topic.
    #[arg(long = "topic", value_name = "TOPIC")]
    pub topics: Vec<String>,
    /// Only this aggregate's records (its id, the record key).
    #[arg(long)]
    pub aggregate: Option<String>,
    /// Only events of this type (`OrderPlaced`, ...); repeat for several.
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only events that occurred at or after this time (RFC 3339).
    #[arg(long, value_parser = rfc3339)]
    pub from: Option<DateTime<Utc>>,
    /// Only events that occurred before this time (RFC 3339).
    #[arg(long, value_parser = rfc3339, conflicts_with = "follow")]
    pub to: Option<DateTime<Utc>>,
    /// Only records of this correlation id (what one request caused).
    #[arg(long)]
    pub correlation: Option<Uuid>,
    /// Keep reading new records as they are written (until interrupted).
    #[arg(long)]
    pub follow: bool,
    /// Stop after this many records.
    #[arg(long)]
    pub limit: Option<u64>,
}

/// An RFC 3339 time, for clap.
pub fn rfc3339(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}); example: 2026-12-01T10:00:00Z"))
}

impl ReplayArgs {
    fn filter(&self) -> anyhow::Result<Filter> {
        if let (Some(from), Some(to)) = (self.from, self.to)
            && from >= to
        {
            bail!("--from ({from}) must be before --to ({to})");
        }
        if self.limit == Some(0) {
            bail!("--limit must be at least 1");
        }
        Ok(Filter {
            aggregate: self.aggregate.clone(),
            types: self.types.clone(),
            from: self.from,
            to: self.to,
            correlation: self.correlation.map(|c| c.to_string()),
        })
    }
}

pub async fn run(args: ReplayArgs) -> anyhow::Result<()> {
    let filter = args.filter()?;
    let infra = connect::infrastructure()?;
    let known = connect::topic_partitions(&infra).await?;
    let mut plans = Vec::new();
    for topic in topics_of(&args, &infra, &known)? {
        let partitions = connect::partitions_of(&known, &topic)?;
        let ranges = plan(&infra.kafka, &topic, partitions, &args).await?;
        plans.push((topic, ranges));
    }
    let (sender, mut matches) = mpsc::channel(4096);
    for (topic, ranges) in plans {
        let (kafka, filter, sender) = (infra.kafka.clone(), filter.clone(), sender.clone());
        tokio::spawn(async move {
            if let Err(e) = scan_into(&kafka, &topic, &ranges, &filter, &sender).await {
                let _ = sender.send(Err(e)).await;
            }
        });
    }
    drop(sender);
    let mut opener = view::Opener::connect(&infra).await;
    let mut printed = 0u64;
    let mut failed = None;
    while failed.is_none()
        && let Some(first) = matches.recv().await
    {
        // What has arrived (up to a failed scan, printed first), opened with one look-up.
        let mut batch = Vec::new();
        let mut next = Some(first);
        while let Some(record) = next.take() {
            match record {
                Ok(record) => batch.push(record),
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
            if batch.len() < BATCH {
                next = matches.try_recv().ok();
            }
        }
        let values = opener.values(&batch).await;
        let mut out = std::io::stdout().lock();
        for (record, value) in batch.iter().zip(values) {
            let line = inspection::record::as_json(record, value).to_string();
            if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
                return Ok(()); // The reader went away (`| head`): nothing more to say.
            }
            printed += 1;
            if args.limit.is_some_and(|limit| printed >= limit) {
                return Ok(());
            }
        }
    }
    failed.map_or(Ok(()), Err)
}

/// The topics asked for (every event topic when none is named).
fn topics_of(
    args: &ReplayArgs,
    infra: &Infrastructure,
    known: &BTreeMap<String, i32>,
) -> anyhow::Result<Vec<String>> {
    if args.topics.is_empty() {
        return Ok(SERVICES.iter().map(|s| infra.topics.events(s)).collect());
    }
    args.topics
        .iter()
        .map(|t| resolve_topic(infra, known, t))
        .collect()
}

/// The most records printed per look-up of keys.
const BATCH: usize = 500;

/// A topic named by the operator: `<prefix><name>`, or the events topic of service `name`.
pub fn resolve_topic(
    infra: &Infrastructure,
    known: &BTreeMap<String, i32>,
    name: &str,
) -> anyhow::Result<String> {
    let full = format!("{}{name}", infra.topics.prefix());
    if known.contains_key(&full) {
        return Ok(full);
    }
    let events = infra.topics.events(name);
    if known.contains_key(&events) {
        return Ok(events);
    }
    bail!("no topic {full:?} on the broker (see `shopctl topics list`)")
}

/// Which partitions of `topic` to read, from where to where.
async fn plan(
    kafka: &KafkaSettings,
    topic: &str,
    partitions: i32,
    args: &ReplayArgs,
) -> anyhow::Result<BTreeMap<i32, Range>> {
    let wanted: Vec<i32> = match &args.aggregate {
        Some(id) => vec![partition_for(id, partitions)],
        None => (0..partitions).collect(),
    };
    let starts = match args.from {
        Some(from) => scan::offsets_for_time(kafka, topic, &wanted, from).await?,
        None => wanted.iter().map(|p| (*p, 0)).collect(),
    };
    let mut ranges = BTreeMap::new();
    for partition in wanted {
        let to = if args.follow {
            None
        } else {
            Some(scan::watermarks(kafka, topic, partition).await?.1)
        };
        let from = starts.get(&partition).copied().unwrap_or(0);
        ranges.insert(partition, Range { from, to });
    }
    Ok(ranges)
}

async fn scan_into(
    kafka: &KafkaSettings,
    topic: &str,
    ranges: &BTreeMap<i32, Range>,
    filter: &Filter,
    sender: &mpsc::Sender<anyhow::Result<ScannedRecord>>,
) -> anyhow::Result<()> {
    let mut log = LogScan::open(kafka, topic, ranges)?;
    while !log.is_done() {
        for record in log
            .next_batch(1000, std::time::Duration::from_millis(500))
            .await?
        {
            if filter.matches(&record) && sender.send(Ok(record)).await.is_err() {
                return Ok(()); // Enough printed.
            }
        }
    }
    Ok(())
}
