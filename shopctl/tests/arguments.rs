//! Every subcommand given a command line it cannot run, or pointed at services that are
//! down, answers with one line on stderr and a non-zero exit code, promptly.

use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_shopctl");

/// Runs shopctl with the environment `vars` only; (exit code, stderr).
fn run(args: &[&str], vars: &[(&str, &str)]) -> (Option<i32>, String) {
    let output = Command::new(BIN)
        .args(args)
        .env_clear()
        .envs(vars.iter().copied())
        .output()
        .expect("run shopctl");
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn assert_one_line_failure(
    args: &[&str],
    vars: &[(&str, &str)],
    expected_code: i32,
    mentions: &str,
) {
    let started = Instant::now();
    let (code, stderr) = run(args, vars);
    assert_eq!(code, Some(expected_code), "{args:?}: {stderr}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "{args:?} printed more than one line: {stderr}"
    );
    assert!(stderr.starts_with("shopctl: "), "{args:?}: {stderr}");
    assert!(
        stderr.contains(mentions),
        "{args:?} should mention {mentions:?}: {stderr}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{args:?} took {:?}",
        started.elapsed()
    );
}

#[test]
fn bad_arguments_of_every_subcommand_give_one_line_and_exit_2() {
    let cases: &[(&[&str], &str)] = &[
        (&[], "subcommand"),
        (&["frobnicate"], "frobnicate"),
        (&["topics"], "subcommand"),
        (&["topics", "create", "--now"], "--now"),
        (&["rebuild"], "READ_MODEL"),
        (&["rebuild", "baskets"], "baskets"),
        (
            &["rebuild", "orders", "--in-place", "--compare-only"],
            "--compare-only",
        ),
        (&["rebuild", "orders", "--batch", "0"], "--batch"),
        (&["replay", "--from", "yesterday"], "RFC 3339"),
        (&["replay", "--correlation", "42"], "--correlation"),
        (
            &["replay", "--follow", "--to", "2026-01-01T00:00:00Z"],
            "--to",
        ),
        (&["replay", "--limit", "-3"], "-3"),
        (&["explain"], "CORRELATION_ID"),
        (&["explain", "not-a-uuid"], "not-a-uuid"),
        (&["lag", "--all"], "--all"),
        (&["dead-letters", "retry", "orders"], "AGGREGATE"),
        (
            &["dead-letters", "list", "--read-model", "baskets"],
            "baskets",
        ),
        (&["dead-letters", "retry", "baskets", "b-1"], "baskets"),
        (&["dead-letters", "skip"], "READ_MODEL"),
        (&["tail"], "TOPIC"),
        (&["tail", "orders.events", "--last", "-1"], "-1"),
        (
            &["tail", "orders.events", "--last", "2", "--from-beginning"],
            "--from-beginning",
        ),
        (&["read", "order"], "ID"),
        (&["api-key"], "subcommand"),
        (&["api-key", "rotate"], "rotate"),
    ];
    for (args, mentions) in cases {
        assert_one_line_failure(args, &[], 2, mentions);
    }
}

#[test]
fn arguments_only_a_run_can_judge_give_one_line_and_exit_1() {
    let vars = [
        ("KAFKA_BROKERS", "127.0.0.1:1"),
        ("KAFKA_TIMEOUT_MS", "1000"),
    ];
    let cases: &[(&[&str], &str)] = &[
        (
            &[
                "replay",
                "--from",
                "2026-02-01T00:00:00Z",
                "--to",
                "2026-01-01T00:00:00Z",
            ],
            "--from",
        ),
        (&["replay", "--limit", "0"], "--limit"),
        (&["read", "basket", "b-1"], "basket"),
        (&["api-key", "hash"], "stdin"),
    ];
    for (args, mentions) in cases {
        assert_one_line_failure(args, &vars, 1, mentions);
    }
}

#[test]
fn unreachable_broker_or_database_gives_one_line_and_exit_1_within_a_bound() {
    let down = [
        ("KAFKA_BROKERS", "127.0.0.1:1"),
        ("KAFKA_TIMEOUT_MS", "1000"),
        ("DATABASE_URL", "postgres://shop:shop@127.0.0.1:1/shop"),
    ];
    let id = "0190a5c8-0000-7000-8000-000000000003";
    let cases: &[(&[&str], &str)] = &[
        (&["topics", "list"], "broker"),
        (&["rebuild", "orders"], "broker"),
        (&["replay"], "broker"),
        (&["tail", "orders.events"], "broker"),
        (&["read", "order", id], "broker"),
        (&["lag"], "broker"),
        (&["explain", id], "Postgres"),
        (&["dead-letters", "list"], "Postgres"),
    ];
    for (args, mentions) in cases {
        assert_one_line_failure(args, &down, 1, mentions);
    }
}
