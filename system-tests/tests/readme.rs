//! The README is part of the product: its configuration table lists every variable the
//! services read, with the default the code uses, and its quick start is what CI runs.

use system_tests::repo_root;

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).expect("README.md")
}

#[test]
fn the_configuration_table_lists_every_variable_with_its_default() {
    let readme = readme();
    let settings = [
        command_api::config::settings(),
        projections::config::settings(),
        saga_orchestrator::config::settings(),
        web_console::config::settings(),
    ]
    .concat();
    for setting in settings {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{}` |", setting.name)))
            .unwrap_or_else(|| panic!("README has no table row for {}", setting.name));
        let default = match setting.default {
            Some("") => "(empty)".to_owned(),
            Some(d) => format!("`{d}`"),
            None => "(required)".to_owned(),
        };
        assert!(
            row.contains(&default),
            "README row of {} lacks default {default}: {row}",
            setting.name
        );
    }
}

#[test]
fn ci_runs_the_readme_test_command() {
    let readme = readme();
    assert!(readme.contains("./dev up "), "quick start: run it");
    assert!(readme.contains("./dev test "), "quick start: test it");
    let ci = std::fs::read_to_string(repo_root().join(".ci/run")).expect(".ci/run");
    assert!(
        ci.lines().any(|l| l.trim() == "exec ./dev test"),
        ".ci/run must call ./dev test"
    );
}
