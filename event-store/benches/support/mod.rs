//! Shared by the event store's benchmarks: latency statistics, and the ledger commands and
//! event records they send.

#![allow(dead_code)]

use event_store::sample::{Deposit, Deposited, LedgerCommand, LedgerEvent};
use schemas::{Command, CommandMeta, Event, EventMeta};

pub fn deposit(account: &str, amount: u64) -> Command<LedgerCommand> {
    Command {
        meta: CommandMeta::new("/bench"),
        payload: Deposit {
            account_id: account.into(),
            amount,
        }
        .into(),
    }
}

/// The JSON event record a deposit becomes, as the writer would write it.
pub fn deposited_record(account: &str, version: u64) -> Vec<u8> {
    Event {
        meta: EventMeta::new(version),
        payload: LedgerEvent::Deposited(Deposited {
            account_id: account.into(),
            amount: 1,
        }),
    }
    .to_document()
    .to_json()
}

/// A histogram of `registry` summed over the series whose labels contain `label` (every
/// series when empty): count, sum, and its 99th percentile's bucket bound.
pub fn histogram(
    registry: &prometheus_client::registry::Registry,
    name: &str,
    label: &str,
) -> (u64, f64, f64) {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).expect("metrics encode");
    let (mut count, mut sum) = (0, 0.0);
    let mut buckets: Vec<(f64, u64)> = Vec::new();
    for line in text.lines() {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        if !series.contains(label) {
            continue;
        }
        if series.starts_with(&format!("{name}_count")) {
            count += value.parse::<u64>().unwrap_or(0);
        } else if series.starts_with(&format!("{name}_sum")) {
            sum += value.parse::<f64>().unwrap_or(0.0);
        } else if series.starts_with(&format!("{name}_bucket")) {
            let bound = series
                .split("le=\"")
                .nth(1)
                .and_then(|rest| rest.split('"').next())
                .and_then(|le| le.parse::<f64>().ok())
                .unwrap_or(f64::INFINITY);
            let value = value.parse::<u64>().unwrap_or(0);
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, n)) => *n += value,
                None => buckets.push((bound, value)),
            }
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let p99 = buckets
        .iter()
        .find(|(_, n)| *n as f64 >= count as f64 * 0.99)
        .map_or(f64::INFINITY, |(bound, _)| *bound);
    (count, sum, p99)
}
