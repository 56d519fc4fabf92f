//! The fault suite's binary: everything is in the library (`src/lib.rs`).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    fault_suite::run_cli().await
}
