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
