//! `shopctl topics create | check | list`.

use anyhow::Context;
use clap::Subcommand;
use event_store::admin::Created;
use inspection::topics;
use serde_json::json;
use service_runtime::Infrastructure;
use service_runtime::settings::{Env, Setting};

const KAFKA_REPLICATION_FACTOR: Setting = Setting {
    name: "KAFKA_REPLICATION_FACTOR",
    default: Some("1"),
    help: "replication factor of topics shopctl creates (3 on a production cluster)",
};

#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Create every missing topic with its configuration, then check them all.
    Create,
    /// Check that every topic exists with the configured partitions, retention and cleanup.
    Check,
    /// List the shop's topics with partitions, cleanup policy and retention.
    List,
}

pub async fn run(command: TopicsCommand, json: bool) -> anyhow::Result<()> {
    let env = Env::from_process();
    let infra = Infrastructure::from_env(&env)?;
    let admin = infra.admin()?;
    let specs = infra.topic_specs();
    // Reaching the broker first: a refused certificate or login is named as such.
    crate::connect::topic_partitions(&infra).await?;
    match command {
        TopicsCommand::Create => {
            let replication: i32 = env.parse(&KAFKA_REPLICATION_FACTOR)?;
            let created = admin
                .create(&specs, replication)
                .await
                .with_context(|| format!("creating topics on {}", infra.kafka.brokers))?;
            admin.preflight(&specs).await?;
            print_created(&created, json);
        }
        TopicsCommand::Check => {
            admin.preflight(&specs).await?;
            if json {
                println!("{}", json!({ "ok": true, "topics": specs.len() }));
            } else {
                println!("{} topics fit for use", specs.len());
            }
        }
        TopicsCommand::List => list(&admin, &specs, json).await?,
    }
    Ok(())
}

fn print_created(created: &[Created], json: bool) {
    for outcome in created {
        let (name, action) = match outcome {
            Created::Created(name) => (name, "created"),
            Created::AlreadyExisted(name) => (name, "exists"),
        };
        if json {
            println!("{}", json!({ "topic": name, "action": action }));
        } else {
            println!("{action:<8} {name}");
        }
    }
}

async fn list(
    admin: &event_store::TopicAdmin,
    specs: &[event_store::TopicSpec],
    json: bool,
) -> anyhow::Result<()> {
    for topic in topics::describe(admin, specs).await? {
        let name = &topic.topic;
        let Some(partitions) = topic.partitions else {
            if json {
                println!("{}", json!({ "topic": name, "exists": false }));
            } else {
                println!("{name:<32} missing");
            }
            continue;
        };
        let cleanup = topic.cleanup_policy.as_deref().unwrap_or("?");
        let retention = topic.retention_ms.as_deref().unwrap_or("?");
        if json {
            println!(
                "{}",
                json!({
                    "topic": name,
                    "exists": true,
                    "partitions": partitions,
                    "cleanup.policy": cleanup,
                    "retention.ms": retention,
                })
            );
        } else {
            println!(
                "{name:<32} partitions={partitions:<3} cleanup.policy={cleanup:<7} retention.ms={retention}"
            );
        }
    }
    Ok(())
}
