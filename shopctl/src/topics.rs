//! `shopctl topics create | check | list`.

use anyhow::Context;
use clap::Subcommand;
use event_store::admin::Created;
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
    let names: Vec<String> = specs.iter().map(|s| s.name.clone()).collect();
    let observed = admin.describe(&names).await?;
    for name in &names {
        let Some(topic) = observed.get(name) else {
            if json {
                println!("{}", json!({ "topic": name, "exists": false }));
            } else {
                println!("{name:<32} missing");
            }
            continue;
        };
        let config = |key: &str| topic.configs.get(key).map_or("?", String::as_str);
        if json {
            println!(
                "{}",
                json!({
                    "topic": name,
                    "exists": true,
                    "partitions": topic.partitions,
                    "cleanup.policy": config("cleanup.policy"),
                    "retention.ms": config("retention.ms"),
                })
            );
        } else {
            println!(
                "{name:<32} partitions={:<3} cleanup.policy={:<7} retention.ms={}",
                topic.partitions,
                config("cleanup.policy"),
                config("retention.ms")
            );
        }
    }
    Ok(())
}
