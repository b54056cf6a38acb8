//! The admin command line (`pushgate devices …`, `push-test`, `certs`, `migrate`, `sip`) as an operator
//! runs it: the real binary against a temporary configuration, on the embedded SQLite file and on
//! PostgreSQL (each test creates its own database and drops it; PostgreSQL at 127.0.0.1:5432 is
//! required, as in tests/storage.rs). Registrations are seeded through `Store` directly.

use std::future::Future;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::mpsc;
use std::time::Duration;

use pushgate::ids::{BareJid, DeviceToken, Dialect, ProviderId};
use pushgate::storage::{NewRegistration, Registration, RegistrationFilter, Store};
use pushgate_providers::apns::Credentials;
use sea_orm::{ConnectionTrait, Statement};

#[macro_use]
mod common;
use common::{RegisterAny, raw_connect};

// ---------------------------------------------------------------------------------------------
// Harness

/// One test's world: a config file pointing at its own database.
struct Env {
    dir: tempfile::TempDir,
    /// The `[storage]` section for this backend.
    storage: String,
    /// What the test opens to seed and inspect.
    url: String,
}

impl Env {
    /// Writes a config with an APNs app without credentials (`ios`) and a WebPush provider that
    /// accepts local http endpoints (`up`), plus `extra`; returns its path.
    fn config(&self, extra: &str) -> PathBuf {
        let path = self.dir.path().join("pushgate.toml");
        let text = format!(
            "[component]\njid = \"push.example.org\"\nsecret = \"s\"\n\n{}\n\
             [providers.ios]\nkind = \"apns\"\ntopic = \"org.example.app\"\nenvironment = \"sandbox\"\n\n\
             [providers.up]\nkind = \"webpush\"\nallow_http = true\nallow_private_addresses = true\n\
             request_timeout_secs = 5\n\n{extra}",
            self.storage
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    async fn store(&self) -> Store {
        Store::open(&self.url).await.unwrap()
    }
}

async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let url = Store::sqlite_url_in(&data_dir).unwrap();
    let storage = format!("[storage]\ndata_dir = {:?}\n", data_dir.to_str().unwrap());
    scenario(Env { dir, storage, url }).await;
}

/// A fresh PostgreSQL database for the scenario, dropped afterwards even if it panics.
async fn on_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(Env) -> Fut,
    Fut: Future<Output = ()>,
{
    common::with_fresh_postgres("pushgate_cli", |url| async move {
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            storage: format!("[storage]\nurl = {url:?}\n"),
            url,
        };
        scenario(env).await
    })
    .await;
}

on_both_backends!(
    list_shows_and_filters,
    remove_by_id_and_by_account,
    migrate_is_idempotent,
    certs_report_apns_credentials,
    push_test_reports_the_verdict,
    sip_devices_are_listed_and_removed,
);

/// Runs the binary (blocking this worker only) and returns its output.
fn pushgate(config: &Path, args: &[&str]) -> Output {
    tokio::task::block_in_place(|| {
        Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .env_remove("PUSHGATE_CONFIG")
            .env_remove("RUST_LOG")
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap()
    })
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn run(config: &Path, args: &[&str]) -> Run {
    let out = pushgate(config, args);
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

impl Run {
    #[track_caller]
    fn expect(self, code: i32) -> Self {
        assert_eq!(
            self.code,
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self
    }

    /// Table rows (without the header).
    fn rows(&self) -> Vec<&str> {
        self.stdout.lines().skip(1).collect()
    }
}

// ---------------------------------------------------------------------------------------------
// Fixtures

const ALICE_ENDPOINT: &str = "http://127.0.0.1:9/wpush/v2/alice-secret-endpoint-0123456789";
const ALICE_FCM: &str = "fcm-alice-0123456789abcdefghijklmnopqrstuvwxyz";
const BOB_APNS: &str = "b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0";

fn jid(s: &str) -> BareJid {
    BareJid::new(s).unwrap()
}

fn new(dialect: Dialect, provider: &str, account: &str, token: &str) -> NewRegistration {
    NewRegistration {
        dialect,
        provider: ProviderId::new(provider),
        account: jid(account),
        device_id: (dialect == Dialect::P2).then(|| "device-1".to_owned()),
        muc: None,
        token: DeviceToken::new(token),
        second_token: None,
        webpush_keys: None,
    }
}

/// alice@example.org: WebPush (Tigase dialect) and FCM (p2); bob@other.example: APNs.
async fn seed(store: &Store) -> [Registration; 3] {
    let a = store
        .registered(new(
            Dialect::Tigase,
            "up",
            "alice@example.org",
            ALICE_ENDPOINT,
        ))
        .await;
    let b = store
        .registered(new(Dialect::P2, "fcm", "alice@example.org", ALICE_FCM))
        .await;
    let c = store
        .registered(new(Dialect::Tigase, "ios", "bob@other.example", BOB_APNS))
        .await;
    [a, b, c]
}

/// Nothing that works as a credential appears whole in `text`.
#[track_caller]
fn assert_no_credentials(text: &str, regs: &[Registration]) {
    for r in regs {
        for secret in [r.token.as_str(), r.node.as_str()]
            .into_iter()
            .chain(r.secret.as_ref().map(|s| s.as_str()))
        {
            assert!(!text.contains(secret), "a credential leaked into:\n{text}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Scenarios

async fn list_shows_and_filters(env: Env) {
    let config = env.config("");
    let store = env.store().await;
    let regs = seed(&store).await;
    store.record_successes(&[regs[0].id]).await.unwrap();
    store
        .record_errors(&[regs[2].id], "BadDeviceToken")
        .await
        .unwrap();

    let all = run(&config, &["devices", "list"]).expect(0);
    let header = all.stdout.lines().next().unwrap();
    for column in [
        "ID",
        "DIALECT",
        "PROVIDER",
        "ACCOUNT",
        "CREATED",
        "LAST SUCCESS",
        "LAST ERROR",
    ] {
        assert!(header.contains(column), "{header}");
    }
    let rows = all.rows();
    assert_eq!(rows.len(), 3, "{}", all.stdout);
    assert!(rows[0].starts_with(&regs[0].id.to_string()) && rows[0].contains("alice@example.org"));
    assert!(rows[0].contains("tigase") && rows[0].contains("http://127.0.0.1:9/…"));
    assert!(rows[1].contains(" p2 ") && rows[1].contains("fcm-alic…"));
    assert!(rows[2].contains("bob@other.example") && rows[2].contains("BadDeviceToken"));
    let dates = |row: &str| {
        row.split_whitespace()
            .filter(|w| w.len() == 10 && w.as_bytes()[4] == b'-' && w.as_bytes()[7] == b'-')
            .count()
    };
    assert_eq!(dates(rows[0]), 2, "created and last success: {}", rows[0]);
    assert_eq!(dates(rows[1]), 1, "created only: {}", rows[1]);
    assert_eq!(dates(rows[2]), 2, "created and last error: {}", rows[2]);
    assert_no_credentials(&all.stdout, &regs);

    let alice = run(
        &config,
        &["devices", "list", "--account", "Alice@Example.org"],
    )
    .expect(0);
    assert_eq!(alice.rows().len(), 2, "{}", alice.stdout);
    assert!(!alice.stdout.contains("bob@"), "{}", alice.stdout);

    let other = run(&config, &["devices", "list", "--domain", "other.example"]).expect(0);
    assert_eq!(other.rows().len(), 1, "{}", other.stdout);
    assert!(other.rows()[0].contains("bob@other.example"));

    let fcm = run(&config, &["devices", "list", "--provider", "fcm"]).expect(0);
    assert_eq!(fcm.rows().len(), 1, "{}", fcm.stdout);
    assert!(fcm.rows()[0].starts_with(&regs[1].id.to_string()));

    let both = run(
        &config,
        &[
            "devices",
            "list",
            "--account",
            "alice@example.org",
            "--provider",
            "up",
        ],
    )
    .expect(0);
    assert_eq!(both.rows().len(), 1, "{}", both.stdout);

    let json = run(&config, &["devices", "list", "--json"]).expect(0);
    let objects: Vec<serde_json::Value> = json
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert_eq!(objects.len(), 3);
    assert_eq!(objects[1]["id"], regs[1].id);
    assert_eq!(objects[1]["dialect"], "p2");
    assert_eq!(objects[1]["provider"], "fcm");
    assert_eq!(objects[2]["account"], "bob@other.example");
    assert_eq!(objects[2]["domain"], "other.example");
    assert_eq!(objects[2]["last_error"], "BadDeviceToken");
    assert!(objects[0]["last_success_at"].is_string());
    assert!(objects[1]["last_success_at"].is_null());
    assert_no_credentials(&json.stdout, &regs);

    let filtered = run(
        &config,
        &["devices", "list", "--json", "--domain", "example.org"],
    )
    .expect(0);
    assert_eq!(filtered.stdout.lines().count(), 2, "{}", filtered.stdout);

    let none = run(
        &config,
        &["devices", "list", "--account", "nobody@example.org"],
    )
    .expect(3);
    assert!(none.stdout.is_empty(), "{}", none.stdout);
    run(&config, &["devices", "list", "--account", "@@"]).expect(2);
}

async fn remove_by_id_and_by_account(env: Env) {
    let config = env.config("");
    let store = env.store().await;
    let regs = seed(&store).await;
    let remaining = |store: Store| async move {
        store
            .list(&RegistrationFilter::default())
            .await
            .unwrap()
            .into_iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };

    let out = run(
        &config,
        &["devices", "remove", "--id", &regs[2].id.to_string()],
    )
    .expect(0);
    assert!(
        out.stdout.contains("removed 1 registration"),
        "{}",
        out.stdout
    );
    assert!(
        store
            .find_by_node(regs[2].node.as_str())
            .await
            .unwrap()
            .is_none()
    );
    assert_eq!(remaining(store.clone()).await, vec![regs[0].id, regs[1].id]);
    let again = run(
        &config,
        &["devices", "remove", "--id", &regs[2].id.to_string()],
    )
    .expect(3);
    assert!(again.stdout.contains("removed 0"), "{}", again.stdout);

    let out = run(
        &config,
        &[
            "devices",
            "remove",
            "--account",
            "alice@example.org",
            "--provider",
            "fcm",
        ],
    )
    .expect(0);
    assert!(
        out.stdout.contains("removed 1 registration"),
        "{}",
        out.stdout
    );
    assert_eq!(remaining(store.clone()).await, vec![regs[0].id]);

    // Another account's registrations are untouched by an account removal.
    let other = store
        .registered(new(
            Dialect::Tigase,
            "up",
            "carol@example.org",
            "http://127.0.0.1:9/carol",
        ))
        .await;
    let out = run(
        &config,
        &["devices", "remove", "--account", "alice@example.org"],
    )
    .expect(0);
    assert!(
        out.stdout.contains("removed 1 registration"),
        "{}",
        out.stdout
    );
    assert_eq!(remaining(store.clone()).await, vec![other.id]);

    run(
        &config,
        &["devices", "remove", "--account", "alice@example.org"],
    )
    .expect(3);
    assert_eq!(store.count().await.unwrap(), 1);

    // Bad usage: no target, both targets, --provider without --account, not a JID.
    run(&config, &["devices", "remove"]).expect(2);
    run(
        &config,
        &[
            "devices",
            "remove",
            "--id",
            "1",
            "--account",
            "carol@example.org",
        ],
    )
    .expect(2);
    run(&config, &["devices", "remove", "--provider", "up"]).expect(2);
    run(&config, &["devices", "remove", "--account", "example.org"]).expect(2);
    assert_eq!(
        store.count().await.unwrap(),
        1,
        "bad usage removed something"
    );
}

/// The devices SIP servers stored: listed with shortened tokens, removed one by one.
async fn sip_devices_are_listed_and_removed(env: Env) {
    let config = env.config("");
    let store = env.store().await;
    for (account, device) in [
        ("bob@example.org", "phone"),
        ("carol@example.org", "tablet"),
    ] {
        let d = pushgate::storage::SipDevice {
            account: account.to_owned(),
            app_id: "com.example.phone".to_owned(),
            device_id: device.to_owned(),
            platform: "apple".to_owned(),
            token: BOB_APNS.to_owned(),
            voip_token: Some("c0c0".repeat(16)),
            silent: true,
            user_agent: None,
        };
        store.save_sip_device(&d, 0, 10).await.unwrap();
    }
    let all = run(&config, &["sip", "list"]).expect(0);
    assert_eq!(all.rows().len(), 2, "{}", all.stdout);
    assert!(!all.stdout.contains(BOB_APNS), "tokens are shortened");
    let bob = run(
        &config,
        &["sip", "list", "--account", "bob@example.org", "--json"],
    )
    .expect(0);
    let line: serde_json::Value = serde_json::from_str(bob.stdout.trim()).unwrap();
    assert_eq!(line["device_id"], "phone");
    let remove = |device: &str| {
        run(
            &config,
            &[
                "sip",
                "remove",
                "--account",
                "bob@example.org",
                "--app-id",
                "com.example.phone",
                "--device-id",
                device,
            ],
        )
    };
    remove("<urn:uuid:phone>").expect(0);
    remove("phone").expect(3);
    run(&config, &["sip", "list", "--account", "bob@example.org"]).expect(3);
    assert_eq!(
        store
            .sip_devices("carol@example.org", 10)
            .await
            .unwrap()
            .len(),
        1
    );
}

async fn migrate_is_idempotent(env: Env) {
    let config = env.config("");
    let expected = pushgate_migrations::count();
    for _ in 0..2 {
        let out = run(&config, &["migrate"]).expect(0);
        assert!(
            out.stdout
                .contains(&format!("{expected} of {expected} migrations")),
            "{}",
            out.stdout
        );
    }
    // The schema exists before anything but `migrate` opened the database.
    let db = raw_connect(&env.url).await;
    let backend = db.get_database_backend();
    let rows = db
        .query_all_raw(Statement::from_string(
            backend,
            "SELECT version FROM seaql_migrations",
        ))
        .await
        .unwrap();
    assert_eq!(rows.len(), expected);
    db.execute_unprepared("SELECT count(*) FROM registrations")
        .await
        .unwrap();
    db.close().await.unwrap();
}

async fn certs_report_apns_credentials(env: Env) {
    let config = env.config("");
    let out = run(&config, &["certs"]).expect(1);
    let row = out
        .stdout
        .lines()
        .find(|l| l.starts_with("ios"))
        .unwrap_or_else(|| panic!("no row for the APNs app:\n{}", out.stdout));
    assert!(row.contains("MISSING"), "{row}");
    assert!(
        !out.stdout.contains("up "),
        "WebPush is no APNs app:\n{}",
        out.stdout
    );

    // Credentials uploaded at run time (stored in the database) count.
    let key = rcgen::KeyPair::generate().unwrap().serialize_pem();
    let store = env.store().await;
    store
        .save_credentials(
            &ProviderId::new("ios"),
            &Credentials::Token {
                key_pem: key,
                key_id: "ABC123DEFG".into(),
                team_id: "TEAM123456".into(),
            },
            None,
        )
        .await
        .unwrap();
    let out = run(&config, &["certs"]).expect(0);
    let row = out.stdout.lines().find(|l| l.starts_with("ios")).unwrap();
    assert!(
        row.contains("token") && row.contains("key ABC123DEFG, team TEAM123456"),
        "{row}"
    );
    assert!(!out.stdout.contains("PRIVATE KEY"));

    // A second app without credentials makes it fail again.
    let config = env.config(
        "[providers.ios2]\nkind = \"apns\"\ntopic = \"org.example.two\"\nenvironment = \"production\"\n",
    );
    let out = run(&config, &["certs", "--json"]).expect(1);
    let apps: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(apps.len(), 2, "{}", out.stdout);
    assert_eq!(apps[0]["provider"], "ios");
    assert_eq!(apps[0]["missing"], false);
    assert_eq!(apps[1]["provider"], "ios2");
    assert_eq!(apps[1]["missing"], true);
}

/// A WebPush endpoint on loopback answering each request with the next status; sends each
/// request's first line back.
fn push_service(statuses: Vec<u16>) -> (String, mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for status in statuses {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let mut reader = BufReader::new(stream);
            let mut request_line = String::new();
            reader.read_line(&mut request_line).unwrap();
            let mut length = 0usize;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':')
                    && k.eq_ignore_ascii_case("content-length")
                {
                    length = v.trim().parse().unwrap();
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let mut stream = reader.into_inner();
            write!(
                stream,
                "HTTP/1.1 {status} Whatever\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
            )
            .unwrap();
            let _ = tx.send(request_line.trim_end().to_owned());
        }
    });
    (
        format!("http://127.0.0.1:{port}/wpush/v2/device-0123456789abcdef"),
        rx,
    )
}

async fn push_test_reports_the_verdict(env: Env) {
    let config = env.config("");
    let (endpoint, requests) = push_service(vec![201, 410]);
    let args = [
        "push-test",
        "--provider",
        "up",
        "--token",
        &endpoint,
        "--body",
        "hello",
    ];

    let out = run(&config, &args).expect(0);
    assert_eq!(out.stdout.trim(), "sent", "{}", out.stderr);
    let request = requests.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(request, "POST /wpush/v2/device-0123456789abcdef HTTP/1.1");

    let out = run(&config, &args).expect(1);
    assert!(out.stdout.starts_with("dead_token: "), "{}", out.stdout);
    requests.recv_timeout(Duration::from_secs(5)).unwrap();

    // Nobody listens any more: a transient failure, still exit 1.
    let out = run(&config, &args).expect(1);
    assert!(out.stdout.starts_with("transient: "), "{}", out.stdout);

    // An APNs app without credentials cannot send (after looking for stored ones).
    let out = run(
        &config,
        &[
            "push-test",
            "--provider",
            "ios",
            "--token",
            BOB_APNS,
            "--kind",
            "background",
        ],
    )
    .expect(1);
    assert!(out.stdout.starts_with("transient: "), "{}", out.stdout);
}

// ---------------------------------------------------------------------------------------------
// Bad usage, no database needed

#[test]
fn bad_usage_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("pushgate.toml");
    let data_dir = dir.path().join("data");
    std::fs::write(
        &config,
        format!(
            "[component]\njid = \"push.example.org\"\nsecret = \"s\"\n[storage]\ndata_dir = {:?}\n\
             [providers.up]\nkind = \"webpush\"\n",
            data_dir.to_str().unwrap()
        ),
    )
    .unwrap();
    let run = |args: &[&str], config: &Path| {
        let out = Command::new(env!("CARGO_BIN_EXE_pushgate"))
            .env_remove("PUSHGATE_CONFIG")
            .args(args)
            .arg("--config")
            .arg(config)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let missing = dir.path().join("nonexistent.toml");
    for args in [&["devices", "list"][..], &["migrate"], &["certs"]] {
        let (code, stderr) = run(args, &missing);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains("not found"), "{stderr}");
    }
    let (code, stderr) = run(
        &["push-test", "--provider", "nope", "--token", "x"],
        &config,
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("nope") && stderr.contains("up"), "{stderr}");
    // An unknown kind, a p256dh without its auth, and an http endpoint the WebPush provider
    // refuses (allow_http is off: the device is invalid).
    for extra in [
        &["--token", "https://h.example/x", "--kind", "loud"][..],
        &["--token", "https://h.example/x", "--p256dh", "k"],
        &["--token", "http://127.0.0.1:9/x"],
    ] {
        let args = [&["push-test", "--provider", "up"][..], extra].concat();
        let (code, stderr) = run(&args, &config);
        assert_eq!(code, Some(2), "{args:?}: {stderr}");
    }
    let (code, _) = run(&["devices", "frobnicate"], &config);
    assert_eq!(code, Some(2));
    let (code, stderr) = run(&["devices", "list", "--domain", "a@b"], &config);
    assert_eq!(code, Some(2), "{stderr}");
    // None of this touched the database.
    assert!(!data_dir.exists(), "bad usage opened the store");
}
