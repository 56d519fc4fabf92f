//! Shared by the event store's benchmarks: latency statistics, and the ledger commands and
//! event records they send.

#![allow(dead_code)]

use std::time::Duration;

use chrono::Utc;
use event_store::sample::{Deposit, Deposited, LedgerCommand, LedgerEvent};
use schemas::{
    Command, CommandId, CommandMeta, CorrelationId, Event, EventId, EventMeta, TraceParent,
};

/// p50 and p99 of latencies, in milliseconds.
pub fn percentiles(mut latencies: Vec<Duration>) -> (f64, f64) {
    latencies.sort_unstable();
    let at = |q: f64| {
        let i = ((latencies.len() as f64 - 1.0) * q).round() as usize;
        latencies[i].as_secs_f64() * 1000.0
    };
    (at(0.50), at(0.99))
}

pub fn deposit(account: &str, amount: u64) -> Command<LedgerCommand> {
    Command {
        meta: CommandMeta {
            id: CommandId::new(),
            issuer: "/bench".into(),
            expected_version: None,
            issued_at: Utc::now(),
            correlation_id: CorrelationId::new(),
            causation_id: uuid::Uuid::now_v7(),
            traceparent: TraceParent::new_root(),
        },
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
        meta: EventMeta {
            id: EventId::new(),
            version,
            occurred_at: Utc::now(),
            command_id: CommandId::new(),
            correlation_id: CorrelationId::new(),
            causation_id: uuid::Uuid::now_v7(),
            traceparent: TraceParent::new_root(),
        },
        payload: LedgerEvent::Deposited(Deposited {
            account_id: account.into(),
            amount: 1,
        }),
    }
    .to_document()
    .to_json()
}
