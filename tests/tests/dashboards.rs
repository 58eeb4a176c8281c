//! The shipped Grafana dashboards are sound for Grafana's import (schemaVersion,
//! uid, unique panel ids, the datasource variable, a query in every target, uids
//! unique across files), and the shipped Prometheus configuration passes
//! `promtool check config`. That every query returns data from a live cluster is
//! `sextant/tests/prometheus_discovery.rs`'s to show.

use std::process::Command;

use sextant_tests::dashboards;

#[test]
fn every_dashboard_is_sound() {
    let all = dashboards::load_all().expect("dashboards");
    assert!(all.len() >= 5, "five dashboards: {}", all.len());
    let mut uids = std::collections::BTreeSet::new();
    for (path, d) in &all {
        let problems = dashboards::problems(d);
        assert!(problems.is_empty(), "{}: {problems:?}", path.display());
        let uid = d["uid"].as_str().unwrap_or_default().to_owned();
        assert!(uids.insert(uid.clone()), "uid {uid} used twice");
        assert!(
            !dashboards::panel_queries(d).is_empty(),
            "{}",
            path.display()
        );
    }
    // A dashboard without a datasource variable is refused.
    let mut broken = all[0].1.clone();
    broken["templating"]["list"] = serde_json::json!([]);
    assert!(!dashboards::problems(&broken).is_empty());
}

#[test]
fn the_prometheus_configuration_passes_promtool() {
    let promtool = sextant_tests::require_command("promtool").expect("promtool");
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../grafana");
    let config = std::fs::read_to_string(shipped.join("prometheus/prometheus.yml"))
        .expect("prometheus.yml")
        .replace("https://SEXTANT_API_SERVER", "https://10.0.0.1:6443");
    std::fs::write(dir.path().join("prometheus.yml"), config).expect("write");
    for f in ["ca.crt", "client.crt", "client.key"] {
        std::fs::write(dir.path().join(f), "").expect("write");
    }
    std::fs::create_dir(dir.path().join("rules")).expect("mkdir");
    std::fs::copy(
        shipped.join("rules/sextant.rules.yml"),
        dir.path().join("rules/sextant.rules.yml"),
    )
    .expect("copy");
    let out = Command::new(promtool)
        .args(["check", "config"])
        .arg(dir.path().join("prometheus.yml"))
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
