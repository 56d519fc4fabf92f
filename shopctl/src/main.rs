//! `shopctl`: the operator's command line. Reads the same environment variables as the
//! services (`KAFKA_BROKERS`, `TOPIC_PREFIX`, `EVENT_PARTITIONS`, ...), so it acts on the
//! topics they use. Errors print one line and exit non-zero.

mod dead_letters;
mod topics;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "shopctl", version, about = "Operate the event-sourced shop")]
struct Cli {
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create, check and list the shop's topics.
    #[command(subcommand)]
    Topics(topics::TopicsCommand),
    /// List, retry and skip the records the read models parked.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let outcome = match cli.command {
        Command::Topics(command) => topics::run(command, cli.json).await,
        Command::DeadLetters(command) => dead_letters::run(command, cli.json).await,
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shopctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
