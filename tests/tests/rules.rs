//! Every shipped Prometheus rule file (`grafana/rules/*.rules.yml`) passes
//! `promtool check rules`, and every unit-test file beside it
//! (`*.rules.test.yml`) passes `promtool test rules`; every alert has a unit test
//! and a runbook in `docs/runbooks.md`.

use std::{path::PathBuf, process::Command};

fn rules_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../grafana/rules")
}

fn files(suffix: &str) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(rules_dir())
        .expect("grafana/rules")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(suffix))
        .collect();
    out.sort();
    out
}

fn promtool(args: &[&str], file: &PathBuf) -> String {
    let promtool = sextant_tests::require_command("promtool").expect("promtool");
    let out = Command::new(promtool)
        .args(args)
        .arg(file)
        .current_dir(rules_dir())
        .output()
        .expect("running promtool");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "promtool {args:?} {}:\n{text}",
        file.display()
    );
    text
}

/// The names after `alert:` in a rules or test file.
fn alerts(text: &str, key: &str) -> Vec<String> {
    let mut out: Vec<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix(key))
        .map(|n| n.trim().to_owned())
        .collect();
    out.sort();
    out.dedup();
    out
}

#[test]
fn rule_files_check_and_their_unit_tests_pass() {
    let rules = files(".rules.yml");
    assert!(
        !rules.is_empty(),
        "no rule files in {}",
        rules_dir().display()
    );
    let runbooks = std::fs::read_to_string(rules_dir().join("../../docs/runbooks.md"))
        .expect("docs/runbooks.md");
    for file in &rules {
        promtool(&["check", "rules"], file);
        let text = std::fs::read_to_string(file).expect("rule file");
        let test_file = PathBuf::from(
            file.to_string_lossy()
                .replace(".rules.yml", ".rules.test.yml"),
        );
        let tests = std::fs::read_to_string(&test_file)
            .unwrap_or_else(|e| panic!("{}: {e}", test_file.display()));
        let out = promtool(&["test", "rules"], &test_file);
        assert!(out.contains("SUCCESS"), "{out}");
        let tested = alerts(&tests, "alertname:");
        for alert in alerts(&text, "- alert:") {
            assert!(
                tested.contains(&alert),
                "{alert} has no unit test in {}",
                test_file.display()
            );
            let anchor = format!("## {alert}");
            assert!(
                runbooks.contains(&anchor),
                "{alert} has no runbook (`{anchor}` in docs/runbooks.md)"
            );
        }
    }
}
