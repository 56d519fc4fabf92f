//! `shopctl`: parses the command line and runs one command. Errors, including bad
//! arguments, print one line on stderr: exit code 2 for a command line that cannot be
//! run, 1 for a command that failed.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{Parser, Subcommand};
use shopctl::{api_key, dead_letters, explain, inspect, lag, openapi, rebuild, replay, topics};

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
    /// Rebuild a read model from the log: blue/green (default) or in place.
    Rebuild(rebuild::RebuildArgs),
    /// Print a slice of the log as JSON lines, filtered; --follow keeps tailing.
    Replay(replay::ReplayArgs),
    /// Show what one request caused: request -> events -> saga steps -> events.
    Explain(explain::ExplainArgs),
    /// How far behind each read model, the saga and the writers are.
    Lag,
    /// List, retry and skip the records the read models parked.
    #[command(subcommand)]
    DeadLetters(dead_letters::DeadLettersCommand),
    /// Follow a topic: keys, headers and pretty JSON.
    Tail(inspect::TailArgs),
    /// Print every event of one aggregate: keys, headers and pretty JSON.
    Read(inspect::ReadArgs),
    /// New API keys, and the `sha256:` entries to configure for them.
    #[command(subcommand)]
    ApiKey(api_key::ApiKeyCommand),
    /// A new Standard Webhooks signing secret (`whsec_...`) for NOTIFICATION_WEBHOOK_SECRET.
    WebhookSecret,
    /// A new secret for EMAIL_INDEX_KEY (set it once, before the first registration).
    EmailIndexKey,
    /// Print the OpenAPI document of every API behind the gateway (gateway/openapi.json).
    Openapi {
        /// Write it to this file instead (say gateway/openapi.json).
        #[arg(long)]
        write: Option<std::path::PathBuf>,
    },
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> ExitCode {
    audit_lines_on_stderr();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            e.exit()
        }
        Err(e) if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            eprintln!("shopctl: a subcommand is required (see --help)");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("shopctl: {} (see --help)", first_line(&e));
            return ExitCode::from(2);
        }
    };
    let json = cli.json;
    let outcome = match cli.command {
        Command::Topics(command) => topics::run(command, json).await,
        Command::Rebuild(args) => rebuild::run(args, json).await,
        Command::Replay(args) => replay::run(args).await,
        Command::Explain(args) => explain::run(args, json).await,
        Command::Lag => lag::run(json).await,
        Command::DeadLetters(command) => dead_letters::run(command, json).await,
        Command::Tail(args) => inspect::tail(args, json).await,
        Command::Read(args) => inspect::read(args, json).await,
        Command::ApiKey(command) => api_key::run(command, json),
        Command::Openapi { write } => openapi::run(write),
        Command::WebhookSecret => {
            api_key::print_webhook_secret(json);
            Ok(())
        }
        Command::EmailIndexKey => {
            api_key::print_email_index_key(json);
            Ok(())
        }
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!(
                "shopctl: {}",
                service_runtime::telemetry::one_line(e.as_ref())
            );
            ExitCode::FAILURE
        }
    }
}

/// The audit lines of operator actions (dead-letter retries and skips), as JSON on stderr;
/// nothing else is logged.
fn audit_lines_on_stderr() {
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::new("off,audit=info"))
        .try_init();
}

/// clap's message on one line: its first paragraph (which may name the missing
/// arguments on lines of their own), without "error: " and the usage that follows.
fn first_line(e: &clap::Error) -> String {
    let text = e.to_string();
    let paragraph: Vec<&str> = text
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect();
    let line = paragraph.join(" ");
    let line = line.trim_start_matches("error: ");
    if line.is_empty() {
        "invalid arguments".to_owned()
    } else {
        line.to_owned()
    }
}
