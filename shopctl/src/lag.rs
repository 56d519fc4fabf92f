//! `shopctl lag`: how far behind each reader of the log is, in records and in seconds
//! (measured by [`inspection::lag`]), as a table or as JSON lines.

use inspection::lag::{self, ReaderLag};
use serde_json::json;

use crate::connect;

pub async fn run(json: bool) -> anyhow::Result<()> {
    let infra = connect::infrastructure()?;
    // The broker first: when both are down, it is the one named.
    let known = connect::topic_partitions(&infra).await?;
    let pool = connect::postgres(&infra, 2).await?;
    print(&lag::readers_of(&infra, &pool, &known).await?, json);
    Ok(())
}

fn print(lags: &[ReaderLag], json: bool) {
    if json {
        for lag in lags {
            println!("{}", json!(lag));
        }
        return;
    }
    println!(
        "{:<28} {:<44} {:>10} {:>12}",
        "reader", "consumer group", "behind", "oldest (s)"
    );
    for lag in lags {
        println!(
            "{:<28} {:<44} {:>10} {:>12}",
            lag.reader,
            lag.group,
            lag.records_behind,
            lag.seconds_behind
                .map_or_else(|| "?".into(), |s| format!("{s:.1}"))
        );
    }
}
