//! A small aggregate (a ledger account) that exercises the store in its own tests, the
//! torture runs and the benchmarks, so that the store is proven without any shop domain.
//! It is a real aggregate with real rules, just not one the shop uses.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::aggregate::Aggregate;

/// Open an account, optionally with money in it: then the command causes two events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct OpenAccount {
    pub account_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initial_deposit: Option<u64>,
}

/// Put money in.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Deposit {
    pub account_id: String,
    pub amount: u64,
}

/// Take money out; refused beyond the balance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Withdraw {
    pub account_id: String,
    pub amount: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct AccountOpened {
    pub account_id: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Deposited {
    pub account_id: String,
    pub amount: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Withdrawn {
    pub account_id: String,
    pub amount: u64,
}

schemas::message_family!(
    /// Commands of the sample ledger.
    LedgerCommand, Command, "account", "ledger", account_id,
    [OpenAccount = 1, Deposit = 1, Withdraw = 1]
);

schemas::message_family!(
    /// Events of the sample ledger.
    LedgerEvent, Event, "account", "ledger", account_id,
    [AccountOpened = 1, Deposited = 1, Withdrawn = 1]
);

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub open: bool,
    pub balance: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub enum LedgerRejection {
    AlreadyOpen,
    NotOpen,
    InsufficientFunds { balance: u64 },
}

/// The ledger account aggregate.
#[derive(Debug)]
pub struct Ledger;

impl Aggregate for Ledger {
    type Command = LedgerCommand;
    type Event = LedgerEvent;
    type State = Account;
    type Rejection = LedgerRejection;

    fn decide(
        state: &Account,
        command: &LedgerCommand,
    ) -> Result<Vec<LedgerEvent>, LedgerRejection> {
        match command {
            LedgerCommand::OpenAccount(_) if state.open => Err(LedgerRejection::AlreadyOpen),
            LedgerCommand::OpenAccount(c) => {
                let opened = AccountOpened {
                    account_id: c.account_id.clone(),
                };
                let deposited = c
                    .initial_deposit
                    .filter(|amount| *amount > 0)
                    .map(|amount| Deposited {
                        account_id: c.account_id.clone(),
                        amount,
                    });
                Ok(std::iter::once(opened.into())
                    .chain(deposited.map(Into::into))
                    .collect())
            }
            _ if !state.open => Err(LedgerRejection::NotOpen),
            LedgerCommand::Deposit(c) => Ok(vec![
                Deposited {
                    account_id: c.account_id.clone(),
                    amount: c.amount,
                }
                .into(),
            ]),
            LedgerCommand::Withdraw(c) if c.amount > state.balance => {
                Err(LedgerRejection::InsufficientFunds {
                    balance: state.balance,
                })
            }
            LedgerCommand::Withdraw(c) => Ok(vec![
                Withdrawn {
                    account_id: c.account_id.clone(),
                    amount: c.amount,
                }
                .into(),
            ]),
        }
    }

    fn evolve(mut state: Account, event: &LedgerEvent) -> Account {
        match event {
            LedgerEvent::AccountOpened(_) => state.open = true,
            LedgerEvent::Deposited(e) => state.balance += e.amount,
            LedgerEvent::Withdrawn(e) => state.balance -= e.amount,
        }
        state
    }
}
