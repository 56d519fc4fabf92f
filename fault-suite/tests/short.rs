//! The fault suite's CI variant, run as the README's test command runs everything: 60 s of
//! load with four SIGKILLs of each service, a broker SIGKILL and restart and a Postgres
//! immediate shutdown, then the whole audit. The suite starts its own broker and Postgres
//! (it restarts them), so it does not touch the ones the other tests share.

use std::process::Command;

#[test]
fn the_short_fault_suite_passes_every_check_of_its_audit() {
    let output = Command::new(env!("CARGO_BIN_EXE_fault-suite"))
        .args(["run", "--short"])
        .output()
        .expect("run the fault suite");
    let stdout = String::from_utf8_lossy(&output.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "the fault suite failed");
    assert!(stdout.contains("fault suite: all checks passed"));
    assert!(!stdout.contains("FAIL"));
}
