//! The deployment files in etc/ must fit the code: the Grafana dashboard parses and queries only
//! metrics pushgate defines, and the systemd unit runs commands the binary has.

use std::collections::BTreeSet;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Every `pushgate_…` name in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("pushgate_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Metric names the code registers: string literals in src/ that look like metric names.
fn defined_metrics() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut dirs = vec![std::path::PathBuf::from(ROOT).join("src")];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for piece in text.split('"').skip(1).step_by(2) {
                    if piece.starts_with("pushgate_")
                        && piece.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    {
                        names.insert(piece.to_owned());
                    }
                }
            }
        }
    }
    names
}

#[test]
fn grafana_dashboard_queries_only_defined_metrics() {
    let text = std::fs::read_to_string(format!("{ROOT}/etc/grafana-dashboard.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard JSON parses");
    let panels = dashboard["panels"].as_array().expect("panels");
    assert!(!panels.is_empty());
    let defined = defined_metrics();
    assert!(defined.contains("pushgate_publishes_total"), "{defined:?}");
    let mut queried = BTreeSet::new();
    for panel in panels {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            queried.extend(metric_names(expr));
        }
    }
    assert!(queried.len() >= 8, "{queried:?}");
    for name in &queried {
        // Histograms are queried through their series suffixes.
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| defined.contains(*b))
            .unwrap_or(name);
        assert!(
            defined.contains(base),
            "dashboard queries {name}, which pushgate does not define"
        );
    }
}

#[test]
fn systemd_unit_runs_existing_commands() {
    let unit = std::fs::read_to_string(format!("{ROOT}/etc/pushgate.service")).unwrap();
    for line in unit.lines().filter(|l| l.starts_with("ExecStart")) {
        let args: Vec<&str> = line.split_once('=').unwrap().1.split_whitespace().collect();
        assert_eq!(args[0], "/usr/local/bin/pushgate", "{line}");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .arg(args[1])
            .arg("--help")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{line}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
