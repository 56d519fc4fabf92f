//! `shopctl explain <correlation-id>`: what one request caused, as a tree
//! request -> events -> saga steps -> commands' events, with times, partitions and
//! offsets ([`inspection::explain`] reads it), drawn with branch lines or as JSON.

use std::fmt::Write;

use anyhow::bail;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::Args;
use inspection::explain::explain;
use inspection::explain::tree::{EventFact, Node};
use serde_json::json;
use uuid::Uuid;

use crate::connect;

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The correlation id (`X-Correlation-Id` of the request, `correlationid` of its events).
    pub correlation_id: Uuid,
}

pub async fn run(args: ExplainArgs, json: bool) -> anyhow::Result<()> {
    let infra = connect::infrastructure()?;
    let pool = connect::postgres(&infra, 2).await?;
    let Some(explained) = explain(&pool, args.correlation_id).await? else {
        bail!(
            "nothing is indexed under correlation id {} (is the projections service running?)",
            args.correlation_id
        );
    };
    if json {
        println!("{}", json!(explained));
    } else {
        println!(
            "correlation {}: {} events, {} saga steps",
            explained.correlation_id, explained.events, explained.saga_steps
        );
        print!("{}", render(&explained.tree));
    }
    Ok(())
}

/// The tree as indented text with branch lines.
pub fn render(roots: &[Node]) -> String {
    let mut out = String::new();
    for root in roots {
        let _ = writeln!(out, "{}", label(root));
        branches(root.children(), "", &mut out);
    }
    out
}

fn branches(nodes: &[Node], indent: &str, out: &mut String) {
    for (i, node) in nodes.iter().enumerate() {
        let last = i + 1 == nodes.len();
        let _ = writeln!(
            out,
            "{indent}{}{}",
            if last { "└── " } else { "├── " },
            label(node)
        );
        let deeper = format!("{indent}{}", if last { "    " } else { "│   " });
        branches(node.children(), &deeper, out);
    }
}

fn label(node: &Node) -> String {
    match node {
        Node::Request { command_id, at, .. } => {
            format!("request command {command_id}  {}", time(*at))
        }
        Node::Deadline { .. } => {
            "saga deadline (steps issued when a deadline passed, or for a message not indexed)"
                .into()
        }
        Node::Event { event, .. } => event_label(event),
        Node::Elsewhere { cause, .. } => format!(
            "{}  (another request: correlation {})",
            event_label(&cause.event),
            cause.correlation_id
        ),
        Node::SagaStep { step: s, .. } => {
            let done = s
                .done_at
                .map_or_else(|| "not done".into(), |d| format!("done {}", time(d)));
            let error = s
                .last_error
                .as_ref()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default();
            format!(
                "saga step {} -> command {}  issued {}  {done}  attempts {}{error}",
                s.step,
                s.command_id,
                time(s.issued_at),
                s.attempts
            )
        }
    }
}

fn event_label(e: &EventFact) -> String {
    format!(
        "{} {} {} v{}  {}/{}@{}  {}",
        e.event_type,
        e.aggregate_type,
        e.aggregate_id,
        e.version,
        e.topic,
        e.partition,
        e.offset,
        time(e.occurred_at)
    )
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Millis, true)
}
