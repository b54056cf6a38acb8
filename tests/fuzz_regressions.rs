//! Replays the fuzzer's seeds and every input it ever crashed on (tests/fuzz/seeds/<target>,
//! tests/fuzz/regressions/<target>) through the same harness functions `scripts/fuzz` drives,
//! so that a fixed crash stays fixed and the harness itself cannot rot between fuzzing runs.

use std::path::Path;

fn replay(target: &str, harness: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz");
    let mut replayed = 0;
    for dir in ["seeds", "regressions"] {
        let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) else {
            continue;
        };
        for entry in entries {
            let path = entry.unwrap().path();
            let data = std::fs::read(&path).unwrap();
            let outcome = std::panic::catch_unwind(|| harness(&data));
            assert!(outcome.is_ok(), "{} panics", path.display());
            replayed += 1;
        }
    }
    assert!(replayed > 0, "no inputs for {target}");
}

#[test]
fn framing() {
    replay("framing", pushgate::fuzzing::framing);
}

#[test]
fn stanza() {
    replay("stanza", pushgate::fuzzing::stanza);
}

#[test]
fn config() {
    replay("config", pushgate::fuzzing::config);
}

#[test]
fn responses() {
    replay("responses", pushgate_providers::fuzzing::responses);
}

#[test]
fn rest_json() {
    replay("rest_json", pushgate::fuzzing::rest_json);
}
