//! `shopctl rebuild <read-model>`: blue/green by default (build a shadow from offset
//! zero while the live model serves, compare checksums, swap atomically), or
//! `--in-place` (one transaction, the live projector held). A progress bar on stderr
//! shows records and records/s; the report goes to stdout (`--json`: one JSON object).

use anyhow::{Context, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use projections::READ_MODELS;
use projections::rebuild::{self, Mode, Progress, Rebuild, RebuildReport};

use crate::connect;

#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// The read model: users, orders, payments, notifications or event_index.
    #[arg(value_parser = clap::builder::PossibleValuesParser::new(READ_MODELS))]
    pub read_model: String,
    /// Rebuild the live schema itself in one transaction; the live projector waits
    /// meanwhile (stop-the-world), queries read the old rows until the commit.
    #[arg(long)]
    pub in_place: bool,
    /// Build the shadow and compare it with the live model, then drop it: no swap. Exits
    /// non-zero when they differ.
    #[arg(long, conflicts_with = "in_place")]
    pub compare_only: bool,
    /// Throw away an interrupted blue/green build instead of resuming it.
    #[arg(long, conflicts_with = "in_place")]
    pub restart: bool,
    /// Records per transaction.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(1..=100_000))]
    pub batch: u32,
}

pub async fn run(args: RebuildArgs, json: bool) -> anyhow::Result<()> {
    let infra = connect::infrastructure()?;
    connect::topic_partitions(&infra).await?;
    let pool = connect::postgres(&infra, 4).await?;
    // The users' model destroys forgotten users' keys as it meets `UserForgotten`: their
    // table exists before it does (a Postgres restored from nothing but the log).
    service_runtime::personal_data::KeyStore::migrator()
        .run(&pool)
        .await
        .context("cannot create the users' keys table (personal_data)")?;
    let rebuild = Rebuild {
        pool,
        kafka: infra.kafka.clone(),
        topics: infra.topics.clone(),
        partitions: infra.partitions,
        batch_max: args.batch as usize,
        restart: args.restart,
    };
    let mode = if args.in_place {
        Mode::InPlace
    } else {
        Mode::BlueGreen {
            swap: !args.compare_only,
        }
    };
    let bar = Bar::new(json);
    let report = rebuild::run(&args.read_model, &rebuild, mode, &bar).await;
    bar.0.finish_and_clear();
    let report = report?;
    print(&report, json);
    if args.compare_only && report.identical == Some(false) {
        bail!(
            "the rebuilt {} differs from the live one in: {}",
            report.read_model,
            report.differing_tables.join(", ")
        );
    }
    Ok(())
}

fn print(report: &RebuildReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(report).unwrap_or_default());
        return;
    }
    println!(
        "rebuilt {} ({}): {} records in {:.1} s ({:.0} records/s){}",
        report.read_model,
        report.mode,
        report.records,
        report.seconds,
        report.records_per_second,
        if report.resumed_from > 0 {
            format!(
                ", resumed a build that held {} records",
                report.resumed_from
            )
        } else {
            String::new()
        }
    );
    if let Some(live) = &report.live {
        println!("  before   {}  {}", live.digest, rows(live));
    }
    println!(
        "  rebuilt  {}  {}",
        report.rebuilt.digest,
        rows(&report.rebuilt)
    );
    match report.identical {
        Some(true) => println!("  identical to the live model at the same positions"),
        Some(false) => println!("  DIFFERS in: {}", report.differing_tables.join(", ")),
        None => println!("  not compared: the live model stood at other positions"),
    }
    if report.swapped {
        println!("  the rebuilt model is live now");
    } else {
        println!("  compared only; the live model is unchanged");
    }
}

fn rows(sum: &rebuild::checksum::Checksum) -> String {
    sum.tables
        .iter()
        .map(|(name, t)| format!("{name}={}", t.rows))
        .collect::<Vec<_>>()
        .join(" ")
}

/// A progress bar on stderr, hidden for `--json` and when stderr is not a terminal.
struct Bar(ProgressBar);

impl Bar {
    fn new(json: bool) -> Self {
        let bar = ProgressBar::with_draw_target(
            Some(0),
            if json {
                ProgressDrawTarget::hidden()
            } else {
                ProgressDrawTarget::stderr()
            },
        );
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>32} [{bar:30}] {human_pos}/{human_len} records {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        Self(bar)
    }
}

impl Progress for Bar {
    fn phase(&self, name: &str, records: u64) {
        self.0.set_prefix(name.to_owned());
        self.0.set_length(records);
        self.0.set_position(0);
        self.0.reset_eta();
    }

    fn advance(&self, records: u64) {
        self.0.inc(records);
    }
}
