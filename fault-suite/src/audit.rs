//! The audit after the storm. It reads the whole log back from the broker, the sagas from
//! Postgres and the webhook deliveries from the receiver, and checks what the README
//! promises: every accepted command in the log exactly once and nothing for a refused one;
//! no command applied twice; every aggregate's versions contiguous; every read model equal
//! to a fold of the log (a shadow rebuilt from offset zero, compared row by row); every
//! saga completed or compensated with end states that agree; no payment or webhook twice
//! under different ids; no dead letter; every reader's checkpoints at the log's end.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use event_store::scan::{LogScan, Range, settled_ends};
use event_store::{KafkaSettings, TopicNames};
use projections::projector::Schema;
use projections::rebuild::{self, Mode, Rebuild, Silent};
use schemas::EventDocument;
use schemas::notifications::NotificationKind;
use schemas::{NotificationId, OrderId};
use sqlx::PgPool;

use crate::faults::{BrokerRestart, GREEN_WITHIN, RED_WITHIN};
use crate::load::{Kind, Outcome, Request};
use crate::webhooks::Delivery;

/// One check and how it went.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    /// What was looked at.
    pub summary: String,
    /// What did not hold (empty when the check passed).
    pub failures: Vec<String>,
}

/// Every check of a run.
#[derive(Clone, Debug, Default)]
pub struct Audit {
    pub checks: Vec<Check>,
}

impl Audit {
    fn add(&mut self, name: &'static str, summary: String, failures: Vec<String>) {
        self.checks.push(Check {
            name,
            summary,
            failures,
        });
    }

    pub fn passed(&self) -> bool {
        self.checks.iter().all(|c| c.failures.is_empty())
    }

    pub fn print(&self) {
        for check in &self.checks {
            let verdict = if check.failures.is_empty() {
                "PASS"
            } else {
                "FAIL"
            };
            println!("  {verdict}  {}: {}", check.name, check.summary);
            for failure in check.failures.iter().take(5) {
                println!("          {failure}");
            }
            if check.failures.len() > 5 {
                println!("          ... and {} more", check.failures.len() - 5);
            }
        }
    }
}

/// Every record of `topic`, from offset zero to its end now.
pub async fn read_topic(
    settings: &KafkaSettings,
    topic: &str,
) -> anyhow::Result<Vec<event_store::scan::ScannedRecord>> {
    let ranges = settled_ends(settings, topic)
        .await?
        .into_iter()
        .map(|(p, end)| {
            (
                p,
                Range {
                    from: 0,
                    to: Some(end),
                },
            )
        })
        .collect();
    let mut scan = LogScan::open(settings, topic, &ranges)?;
    let mut records = Vec::new();
    while !scan.is_done() {
        records.extend(scan.next_batch(5_000, Duration::from_secs(1)).await?);
    }
    Ok(records)
}

/// Where the log ends, per topic partition: the next offset after the last record read.
pub type LogEnds = BTreeMap<(String, i32), i64>;

/// Every event of every service's event topic, and where each partition ended.
pub async fn read_log(
    settings: &KafkaSettings,
    topics: &TopicNames,
) -> anyhow::Result<(Vec<EventDocument>, LogEnds)> {
    let mut events = Vec::new();
    let mut ends = LogEnds::new();
    for service in schemas::catalog::SERVICES {
        for record in read_topic(settings, &topics.events(service)).await? {
            let end = ends
                .entry((record.topic.clone(), record.partition))
                .or_default();
            *end = (*end).max(record.offset + 1);
            events.push(EventDocument::from_json(
                record.payload.as_deref().unwrap_or_default(),
            )?);
        }
    }
    Ok((events, ends))
}

/// A reader that keeps its checkpoints in Postgres (a read model, the saga).
#[derive(Clone, Debug)]
pub struct Reader {
    /// As printed: the service, and the read model.
    pub name: String,
    /// Its table of checkpoints (next offset per topic partition).
    pub checkpoints: String,
    /// The services whose event topics it reads.
    pub services: &'static [&'static str],
}

/// Every reader of the system.
pub fn readers() -> Vec<Reader> {
    let mut readers: Vec<Reader> = projections::READ_MODELS
        .iter()
        .filter_map(|model| {
            Some(Reader {
                name: format!("projections: {model}"),
                checkpoints: Schema::live(model).table("checkpoints"),
                services: projections::services_read_by(model)?,
            })
        })
        .collect();
    readers.push(Reader {
        name: "saga-orchestrator".into(),
        checkpoints: "saga.checkpoints".into(),
        services: &saga_orchestrator::runner::SERVICES,
    });
    readers
}

/// The checkpoints stored in `table`: next offset per (topic, partition).
pub async fn checkpoints(
    pool: &PgPool,
    table: &str,
) -> Result<BTreeMap<(String, i32), i64>, sqlx::Error> {
    let query = format!("SELECT topic, partition, next_offset FROM {table}");
    let rows: Vec<(String, i32, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(query))
        .fetch_all(pool)
        .await?;
    Ok(rows.into_iter().map(|(t, p, o)| ((t, p), o)).collect())
}

/// A partition a reader has not read to its end: topic, partition, its checkpoint (`None`
/// when the checkpoints could not be read), the log's end.
type Behind = (String, i32, Option<i64>, i64);

/// The partitions of the topics in `read` whose stored checkpoint is short of `ends`; a
/// partition without a checkpoint stands at 0.
fn behind(
    stored: Option<&BTreeMap<(String, i32), i64>>,
    read: &HashSet<String>,
    ends: &LogEnds,
) -> Vec<Behind> {
    ends.iter()
        .filter(|((topic, _), _)| read.contains(topic))
        .filter_map(|(key, end)| {
            let at = stored.map(|s| s.get(key).copied().unwrap_or(0));
            (at.is_none_or(|at| at < *end)).then(|| (key.0.clone(), key.1, at, *end))
        })
        .collect()
}

/// Every reader read the whole log: once the load stopped, each one's checkpoint reaches
/// the end of every partition it reads (the last batches get up to `within`). The read-model
/// comparison folds the log only up to the positions the live model reached, so a partition
/// that no instance reads any more shows here and nowhere else.
pub async fn check_readers_caught_up(
    audit: &mut Audit,
    (pool, topics): (&PgPool, &TopicNames),
    ends: &LogEnds,
    within: Duration,
) {
    let began = Instant::now();
    let readers = readers();
    let mut failures = Vec::new();
    for reader in &readers {
        let read: HashSet<String> = reader.services.iter().map(|s| topics.events(s)).collect();
        let late = loop {
            let stored = checkpoints(pool, &reader.checkpoints).await.ok();
            let late = behind(stored.as_ref(), &read, ends);
            if late.is_empty() || began.elapsed() >= within {
                break late;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        failures.extend(late.into_iter().map(|(topic, partition, at, end)| {
            let at = at.map_or("unreadable".to_owned(), |at| at.to_string());
            format!(
                "{}: {topic}[{partition}] checkpoint {at}, log end {end}",
                reader.name
            )
        }));
    }
    audit.add(
        "every reader read the log to its end",
        format!(
            "{} readers, {} partitions with records, {:.1} s after the sagas settled",
            readers.len(),
            ends.len(),
            began.elapsed().as_secs_f64()
        ),
        failures,
    );
}

/// What the audit looks at besides the read models.
#[derive(Debug)]
pub struct Evidence<'a> {
    pub events: &'a [EventDocument],
    pub requests: &'a [Request],
    /// Saga state and document by order id.
    pub sagas: &'a BTreeMap<String, (String, serde_json::Value)>,
    pub deliveries: &'a [Delivery],
    pub dead_letters: usize,
}

/// Events by (subject, type, correlation id).
fn by_request(events: &[EventDocument]) -> HashMap<(String, String, String), Vec<&EventDocument>> {
    let mut index: HashMap<_, Vec<_>> = HashMap::new();
    for e in events {
        index
            .entry((
                e.subject.clone(),
                e.event_type.clone(),
                e.correlationid.to_string(),
            ))
            .or_default()
            .push(e);
    }
    index
}

pub fn check_commands(audit: &mut Audit, evidence: &Evidence<'_>) {
    let index = by_request(evidence.events);
    let mut of_correlation: HashMap<(String, String), usize> = HashMap::new();
    for e in evidence.events {
        *of_correlation
            .entry((e.event_type.clone(), e.correlationid.to_string()))
            .or_default() += 1;
    }
    let (mut accepted, mut refused, mut unknown) = (Vec::new(), Vec::new(), Vec::new());
    let (mut n_accepted, mut n_refused) = (0, 0);
    for request in evidence.requests {
        let kind = request.kind.event_type();
        let correlation = request.correlation_id.to_string();
        match &request.outcome {
            Outcome::Accepted { id, version } => {
                n_accepted += 1;
                let found = index
                    .get(&(id.clone(), kind.to_owned(), correlation.clone()))
                    .map_or(&[][..], Vec::as_slice);
                let versions: Vec<u64> = found.iter().map(|e| e.aggregateversion).collect();
                if versions != [*version] {
                    accepted.push(format!(
                        "{kind} on {id} (correlation {correlation}): answered version {version}, in the log at {versions:?}"
                    ));
                }
            }
            Outcome::Refused { status, body } => {
                n_refused += 1;
                let appended = of_correlation
                    .get(&(kind.to_owned(), correlation.clone()))
                    .copied()
                    .unwrap_or(0);
                if appended > 0 {
                    refused.push(format!(
                        "{kind} refused with {status} ({body}) yet {appended} appended (correlation {correlation})"
                    ));
                }
            }
            Outcome::Unknown { last_error } => unknown.push(format!(
                "{kind} (target {:?}) got no answer in the retry window: {last_error}",
                request.target
            )),
        }
    }
    audit.add(
        "every accepted command is in the log exactly once, at the version it was answered with",
        format!("{n_accepted} accepted requests"),
        accepted,
    );
    audit.add(
        "nothing appended for a refused request",
        format!("{n_refused} refused requests (4xx)"),
        refused,
    );
    audit.add(
        "every request got an answer",
        format!("{} requests", evidence.requests.len()),
        unknown,
    );
}

pub fn check_log(audit: &mut Audit, evidence: &Evidence<'_>) {
    let mut applied: HashMap<(String, String, String), usize> = HashMap::new();
    let mut ids = HashSet::new();
    let mut doubled = Vec::new();
    let mut versions: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    for e in evidence.events {
        *applied
            .entry((
                e.commandid.to_string(),
                e.subject.clone(),
                e.event_type.clone(),
            ))
            .or_default() += 1;
        if !ids.insert(e.id) {
            doubled.push(format!("event id {} appears twice", e.id));
        }
        versions
            .entry((e.aggregatetype.clone(), e.subject.clone()))
            .or_default()
            .push(e.aggregateversion);
    }
    doubled.extend(
        applied
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|((command, subject, kind), n)| {
                format!("command {command} appended {kind} on {subject} {n} times")
            }),
    );
    audit.add(
        "no command applied twice, no event id twice",
        format!(
            "{} events, {} commands",
            evidence.events.len(),
            applied.len()
        ),
        doubled,
    );
    check_versions(audit, versions);
    audit.add(
        "no event went to the dead letters",
        format!("{} dead letters", evidence.dead_letters),
        if evidence.dead_letters == 0 {
            Vec::new()
        } else {
            vec![format!(
                "{} dead letters (shopctl dead-letters list)",
                evidence.dead_letters
            )]
        },
    );
}

/// Every aggregate's versions run 1, 2, 3, ... with none missing or twice.
fn check_versions(audit: &mut Audit, mut versions: BTreeMap<(String, String), Vec<u64>>) {
    let gaps: Vec<String> = versions
        .iter_mut()
        .filter_map(|((kind, subject), seen)| {
            seen.sort_unstable();
            let expected: Vec<u64> = (1..=seen.len() as u64).collect();
            (*seen != expected).then(|| format!("{kind} {subject}: versions {seen:?}"))
        })
        .collect();
    audit.add(
        "every aggregate's versions are contiguous from 1",
        format!("{} aggregates", versions.len()),
        gaps,
    );
}

/// Every saga ended, and its end agrees with the order's and the payment's.
pub fn check_sagas(audit: &mut Audit, evidence: &Evidence<'_>) {
    let (last_of_order, last_payment_of_order) = last_events(evidence.events);
    let orders: Vec<&String> = evidence
        .requests
        .iter()
        .filter(|r| r.kind == Kind::PlaceOrder)
        .filter_map(|r| match &r.outcome {
            Outcome::Accepted { id, .. } => Some(id),
            _ => None,
        })
        .collect();
    let mut unfinished = Vec::new();
    let mut disagreeing = Vec::new();
    let mut ends: BTreeMap<&str, usize> = BTreeMap::new();
    for order in &orders {
        let saga = evidence.sagas.get(*order);
        let state = saga.map_or("none", |(s, _)| s.as_str());
        *ends.entry(state).or_default() += 1;
        let order_end = last_of_order.get(*order).copied();
        let payment_end = last_payment_of_order.get(*order).copied();
        match state {
            "completed" => {
                if order_end != Some("OrderConfirmed") || payment_end != Some("PaymentAuthorized") {
                    disagreeing.push(format!(
                        "{order}: saga completed, order ends {order_end:?}, payment ends {payment_end:?}; its events {:?}; the saga {}",
                        history_of(evidence.events, order),
                        saga.map(|(_, d)| d.to_string()).unwrap_or_default()
                    ));
                }
            }
            "compensated" => {
                if payment_end == Some("PaymentAuthorized")
                    || !matches!(order_end, Some("OrderRejected" | "OrderCancelled"))
                {
                    disagreeing.push(format!(
                        "{order}: saga compensated, order ends {order_end:?}, payment ends {payment_end:?}; its events {:?}; the saga {}",
                        history_of(evidence.events, order),
                        saga.map(|(_, d)| d.to_string()).unwrap_or_default()
                    ));
                }
            }
            other => unfinished.push(format!(
                "{order}: saga {other}; its events {:?}; the saga {}",
                history_of(evidence.events, order),
                saga.map(|(_, d)| d.to_string()).unwrap_or_default()
            )),
        }
    }
    audit.add(
        "every saga completed or compensated",
        format!("{} orders placed; sagas by end: {ends:?}", orders.len()),
        unfinished,
    );
    audit.add(
        "no confirmed order without its payment, no payment kept for a rejected or cancelled order",
        format!("{} orders", orders.len()),
        disagreeing,
    );
}

/// The type of the last event of each order, and of each order's payment, by order id.
fn last_events(events: &[EventDocument]) -> (HashMap<String, &str>, HashMap<String, &str>) {
    let mut last_of_order: HashMap<String, &str> = HashMap::new();
    let mut last_payment_of_order: HashMap<String, &str> = HashMap::new();
    for e in events {
        let order = e.data["order_id"].as_str().unwrap_or_default().to_owned();
        match e.aggregatetype.as_str() {
            "order" => {
                last_of_order.insert(order, &e.event_type);
            }
            "payment" => {
                last_payment_of_order.insert(order, &e.event_type);
            }
            _ => {}
        }
    }
    (last_of_order, last_payment_of_order)
}

/// The types of the events about `order` (its own, its payment's, its notifications'), in
/// log order per topic.
fn history_of(events: &[EventDocument], order: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e.subject == order || e.data["order_id"].as_str() == Some(order))
        .map(|e| format!("{} v{}", e.event_type, e.aggregateversion))
        .collect()
}

/// Webhooks: signed, always under the notification's one id, every sent one delivered.
pub fn check_webhooks(audit: &mut Audit, evidence: &Evidence<'_>) {
    let mut failures = Vec::new();
    let mut delivered: HashSet<&str> = HashSet::new();
    for delivery in evidence.deliveries {
        if !delivery.signed {
            failures.push(format!("delivery {} has a bad signature", delivery.id));
        }
        let expected = delivery.body["order_id"]
            .as_str()
            .and_then(|o| o.parse::<OrderId>().ok())
            .zip(serde_json::from_value::<NotificationKind>(delivery.body["kind"].clone()).ok())
            .map(|(order, kind)| NotificationId::for_order(order, kind).to_string());
        if expected.as_deref() != Some(delivery.id.as_str()) {
            failures.push(format!(
                "delivery under id {} where the notification's id is {expected:?}",
                delivery.id
            ));
        }
        delivered.insert(&delivery.id);
    }
    let sent: Vec<&EventDocument> = evidence
        .events
        .iter()
        .filter(|e| e.event_type == "NotificationSent")
        .collect();
    failures.extend(
        sent.iter()
            .filter(|e| !delivered.contains(e.subject.as_str()))
            .map(|e| format!("notification {} recorded sent, never delivered", e.subject)),
    );
    audit.add(
        "every webhook signed, under its notification's one id, every sent one delivered",
        format!(
            "{} notifications sent, {} deliveries of {} ids",
            sent.len(),
            evidence.deliveries.len(),
            delivered.len()
        ),
        failures,
    );
}

/// Each read model against a shadow rebuilt from offset zero (nothing swapped).
pub async fn check_read_models(audit: &mut Audit, rebuild: &Rebuild) {
    let mut failures = Vec::new();
    let mut compared = Vec::new();
    for model in [
        "users",
        "orders",
        "payments",
        "notifications",
        "event_index",
    ] {
        match rebuild::run(model, rebuild, Mode::BlueGreen { swap: false }, &Silent).await {
            Ok(report) if report.identical == Some(true) => {
                let rows: i64 = report.rebuilt.tables.values().map(|t| t.rows).sum();
                compared.push(format!("{model} {rows} rows"));
            }
            Ok(report) => failures.push(format!(
                "{model}: identical {:?}, differing tables {:?}",
                report.identical, report.differing_tables
            )),
            Err(e) => failures.push(format!("{model}: {e}")),
        }
    }
    audit.add(
        "every read model equals a fold of the log",
        compared.join(", "),
        failures,
    );
}

/// Every broker SIGKILL: each instance noticed it (`/ready` 503) and, once the broker was
/// back, recovered by itself (`/ready` 200) within the bounds.
pub fn check_broker_restarts(audit: &mut Audit, restarts: &[BrokerRestart]) {
    let mut failures = Vec::new();
    for (i, restart) in restarts.iter().enumerate() {
        if restart.red_after.is_none() {
            failures.push(format!(
                "restart {}: not every /ready answered 503 within {RED_WITHIN:?} of the SIGKILL",
                i + 1
            ));
        }
        if restart.green_after.is_none() {
            failures.push(format!(
                "restart {}: not every /ready answered 200 within {GREEN_WITHIN:?} of the restart",
                i + 1
            ));
        }
    }
    let longest = |of: fn(&BrokerRestart) -> Option<Duration>| {
        restarts
            .iter()
            .filter_map(of)
            .max()
            .map_or_else(|| "-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
    };
    audit.add(
        "services follow the broker",
        format!(
            "{} broker restarts; every /ready 503 at most {} after the SIGKILL, 200 again at most {} after the restart",
            restarts.len(),
            longest(|r| r.red_after),
            longest(|r| r.green_after),
        ),
        failures,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORDERS: &str = "shop.orders.events";
    const USERS: &str = "shop.users.events";

    fn offsets(entries: &[(&str, i32, i64)]) -> BTreeMap<(String, i32), i64> {
        entries
            .iter()
            .map(|(t, p, o)| (((*t).to_owned(), *p), *o))
            .collect()
    }

    fn orders_only() -> HashSet<String> {
        HashSet::from([ORDERS.to_owned()])
    }

    #[test]
    fn given_checkpoints_at_every_end_when_checked_then_nothing_is_behind() {
        let ends = offsets(&[(ORDERS, 0, 5), (ORDERS, 1, 3)]);
        let stored = offsets(&[(ORDERS, 0, 5), (ORDERS, 1, 3)]);
        assert!(behind(Some(&stored), &orders_only(), &ends).is_empty());
    }

    #[test]
    fn given_a_partition_short_of_its_end_when_checked_then_it_is_named() {
        let ends = offsets(&[(ORDERS, 0, 5), (ORDERS, 1, 3)]);
        let stored = offsets(&[(ORDERS, 0, 5), (ORDERS, 1, 2)]);
        assert_eq!(
            behind(Some(&stored), &orders_only(), &ends),
            vec![(ORDERS.to_owned(), 1, Some(2), 3)]
        );
    }

    #[test]
    fn given_a_partition_with_records_and_no_checkpoint_when_checked_then_it_stands_at_zero() {
        let ends = offsets(&[(ORDERS, 0, 5), (ORDERS, 1, 3)]);
        let stored = offsets(&[(ORDERS, 0, 5)]);
        assert_eq!(
            behind(Some(&stored), &orders_only(), &ends),
            vec![(ORDERS.to_owned(), 1, Some(0), 3)]
        );
    }

    #[test]
    fn given_topics_the_reader_does_not_read_when_checked_then_they_are_ignored() {
        let ends = offsets(&[(ORDERS, 0, 5), (USERS, 0, 9)]);
        let stored = offsets(&[(ORDERS, 0, 5)]);
        assert!(behind(Some(&stored), &orders_only(), &ends).is_empty());
    }

    #[test]
    fn given_unreadable_checkpoints_when_checked_then_every_partition_is_behind() {
        let ends = offsets(&[(ORDERS, 0, 5), (ORDERS, 1, 3)]);
        assert_eq!(behind(None, &orders_only(), &ends).len(), 2);
    }
}
