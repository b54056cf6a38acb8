//! The `pushgate` binary's command line: what an operator sees from `check-config`.

use std::process::Command;

fn pushgate() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_pushgate"));
    cmd.env_remove("PUSHGATE_CONFIG");
    cmd
}

/// Runs `pushgate check-config` on `path` with extra environment variables.
fn check(path: &std::path::Path, env: &[(&str, &str)]) -> std::process::Output {
    pushgate()
        .args(["check-config", "--config"])
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}

fn write(dir: &tempfile::TempDir, text: &str) -> std::path::PathBuf {
    let path = dir.path().join("pushgate.toml");
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn shipped_config_checks_ok() {
    let out = check(
        std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/etc/pushgate.toml")),
        &[],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.starts_with("ok") && stdout.contains("webpush"),
        "{stdout}"
    );
}

#[test]
fn unknown_key_fails_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[component]\njid = \"push.x\"\nsecret = \"s\"\nreconect = 3\n",
    );
    let out = check(&path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("component.reconect"), "{stderr}");
}

#[test]
fn environment_overrides_the_file_and_bad_values_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(&dir, "[component]\njid = \"push.x\"\nsecret = \"s\"\n");
    let out = check(
        &path,
        &[("PUSHGATE_COMPONENT__JID", "push.from-env.example")],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("push.from-env.example"));

    let out = check(
        &path,
        &[("PUSHGATE_COMPONENT__PUBLISH_TIMEOUT_SECS", "soon")],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("component.publish_timeout_secs"));
}

#[test]
fn provider_credentials_are_checked_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        &dir,
        "[component]\njid = \"push.x\"\nsecret = \"s\"\n\
         [providers.up]\nkind = \"webpush\"\nvapid_private_key_file = \"/nonexistent/vapid.pem\"\n",
    );
    let out = check(&path, &[]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("providers.up.vapid_private_key_file"),
        "{stderr}"
    );
}

#[test]
fn missing_file_is_reported() {
    let out = check(std::path::Path::new("/nonexistent/pushgate.toml"), &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not found"));
}
