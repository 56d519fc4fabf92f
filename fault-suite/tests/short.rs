//! The fault suite's CI variant, run as the README's test command runs everything: 60 s of
//! load with four SIGKILLs of each service, a broker SIGKILL and restart and a Postgres
//! immediate shutdown, then the whole audit; once with one instance of every service and
//! once with two (8 partitions per topic, each SIGKILL hitting one of the two). The suite
//! starts its own broker and Postgres (it restarts them), so it does not touch the ones the
//! other tests share. The two runs take turns: both at once would starve each other.

use std::process::Command;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn passes(args: &[&str]) {
    let _turn = ONE_AT_A_TIME
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let output = Command::new(env!("CARGO_BIN_EXE_fault-suite"))
        .args(args)
        .output()
        .expect("run the fault suite");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the fault suite failed");
    assert!(stdout.contains("fault suite: all checks passed"));
    assert!(!stdout.contains("FAIL"));
}

#[test]
fn the_short_fault_suite_passes_every_check_of_its_audit() {
    passes(&["run", "--short"]);
}

#[test]
fn with_two_instances_of_every_service_it_passes_too() {
    passes(&["run", "--short", "--instances", "2", "--partitions", "8"]);
}
