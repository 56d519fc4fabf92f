//! The write side: one writer per partition decides commands on state it holds itself,
//! appends the events, and answers only once the log confirms them.

pub mod core;
pub mod host;
pub mod log;
pub mod metrics;
pub mod partition;
pub mod peers;
pub mod snapshot;
