//! The shipped deployment files agree with the program: every plan in the
//! Kubernetes ConfigMap validates, and the alertnames the daemon sends match
//! alerts the Prometheus rules define (one vocabulary for on-call). The
//! files' own syntax is checked by `scripts/test` (promtool,
//! systemd-analyze, YAML).

use std::path::Path;

use holdfast::alert::AlertKind;
use holdfast::plan::Plan;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_plan_in_the_kubernetes_configmap_validates() {
    let file = root().join("deploy/kubernetes/configmap.yaml");
    let cm: serde_yaml::Value = serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap())
        .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let data = cm["data"].as_mapping().expect("data");
    assert!(!data.is_empty());
    for (name, text) in data {
        let name = name.as_str().unwrap();
        let text = text.as_str().unwrap();
        let at = file.with_file_name(name);
        // The Secret provides every ${VAR}; any value validates.
        let plan = Plan::parse(text, &at, &|_| Some("from-the-secret".into()))
            .unwrap_or_else(|e| panic!("{} data.{name}: {e}", file.display()));
        assert!(!plan.name.to_string().is_empty());
    }
}

#[test]
fn the_rules_define_an_alert_for_every_daemon_alert_prometheus_can_see() {
    let file = root().join("deploy/prometheus/holdfast.rules.yaml");
    let rules: serde_yaml::Value =
        serde_yaml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let names: Vec<&str> = rules["groups"][0]["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|r| r["alert"].as_str().unwrap())
        .collect();
    // A failed backup shows in Prometheus as a backup too old; the RPO
    // limit lives in the plan, not in a metric.
    for kind in AlertKind::ALL {
        let name = kind.alertname();
        let expected = match kind {
            AlertKind::BackupFailed => "HoldfastBackupTooOld",
            AlertKind::RpoExceeded => continue,
            _ => name,
        };
        assert!(
            names.contains(&expected),
            "{}: no alert {expected} for the daemon's {kind}",
            file.display()
        );
    }
}
