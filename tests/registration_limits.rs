//! The `[registration]` limits through pushgate's real router and store: commands as an XMPP
//! server hands them over, answers checked for condition, type and text, and the refusals
//! counted under their own labels.

mod common;

use std::sync::Arc;

use pushgate::config::Config;
use pushgate::fronts::xmpp::Component;
use pushgate::metrics::METRICS;
use pushgate::storage::Store;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

/// `webpush` takes loopback endpoints (as tests need); `strict` does not.
const PROVIDERS: &str = "[providers.webpush]\nkind = \"webpush\"\nallow_http = true\n\
    allow_private_addresses = true\n\
    [providers.strict]\nkind = \"webpush\"\nallow_http = true\n";

struct Fixture {
    gw: Arc<Component>,
    _dir: tempfile::TempDir,
}

async fn gateway(registration: &str) -> Fixture {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let config = Config::from_toml_str(&format!(
        "[component]\njid = \"push.test\"\nsecret = \"s\"\n[registration]\n{registration}\n{PROVIDERS}"
    ))
    .unwrap();
    let store = Store::open(&Store::sqlite_url_in(dir.path()).unwrap())
        .await
        .unwrap();
    Fixture {
        gw: Component::new(&config, store).unwrap().0,
        _dir: dir,
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('\'', "&apos;")
}

/// A single-stage command with a submitted form, from `from`.
fn command(from: &str, node: &str, fields: &[(&str, &str)]) -> Stanza {
    let form: String = fields
        .iter()
        .map(|(k, v)| format!("<field var='{k}'><value>{}</value></field>", escape(v)))
        .collect();
    let xml = format!(
        "<iq xmlns='jabber:component:accept' type='set' id='c1' from='{from}' to='push.test'>\
           <command xmlns='http://jabber.org/protocol/commands' node='{}' action='execute'>\
             <x xmlns='jabber:x:data' type='submit'>{form}</x></command></iq>",
        escape(node)
    );
    Iq::try_from(xml.parse::<Element>().unwrap())
        .unwrap()
        .into()
}

/// The `node` of a completed registration, or the error: (type, condition, text).
type Answer = Result<String, (ErrorType, DefinedCondition, String)>;

async fn run(gw: &Component, stanza: Stanza) -> Answer {
    match common::route(gw, stanza).await {
        Some(Stanza::Iq(Iq::Result {
            payload: Some(p), ..
        })) => {
            let text = String::from(&p);
            let node = text
                .split("var='node'")
                .nth(1)
                .and_then(|rest| rest.split("<value>").nth(1))
                .and_then(|rest| rest.split("</value>").next())
                .unwrap_or_else(|| panic!("no node in {text}"));
            Ok(node.to_owned())
        }
        Some(Stanza::Iq(Iq::Error { error, .. })) => Err((
            error.type_,
            error.defined_condition,
            error.texts.values().cloned().collect(),
        )),
        other => panic!("unexpected answer {other:?}"),
    }
}

async fn tigase(gw: &Component, from: &str, token: &str) -> Answer {
    run(
        gw,
        command(
            from,
            "register-device",
            &[("provider", "webpush"), ("device-token", token)],
        ),
    )
    .await
}

fn endpoint(n: usize) -> String {
    format!("http://127.0.0.1:9/push/{n}")
}

fn refused(node: &str, label: &str) -> u64 {
    METRICS.commands.with_label_values(&[node, label]).get()
}

fn err(kind: ErrorType, condition: DefinedCondition, text: &str) -> Answer {
    Err((kind, condition, text.to_owned()))
}

#[tokio::test]
async fn the_account_limit_refuses_new_devices_and_never_known_ones() {
    let f = gateway("max_per_account = 2").await;
    let gw = &f.gw;
    let first = tigase(gw, "alice@example.org/a", &endpoint(1))
        .await
        .unwrap();
    tigase(gw, "alice@example.org/a", &endpoint(2))
        .await
        .unwrap();
    let before = refused("register-device", "account_quota");
    let quota = err(
        ErrorType::Cancel,
        DefinedCondition::PolicyViolation,
        "too many registrations for this account (limit 2)",
    );
    assert_eq!(tigase(gw, "alice@example.org/b", &endpoint(3)).await, quota);
    // The p2 dialect counts against the same account.
    let p2 = command(
        "alice@example.org/b",
        "register-push-webpush",
        &[("token", &endpoint(3)), ("device-id", "phone")],
    );
    assert_eq!(run(gw, p2).await, quota);
    assert_eq!(refused("register-device", "account_quota"), before + 1);
    // A known device re-registers, same node.
    assert_eq!(
        tigase(gw, "alice@example.org/a", &endpoint(1)).await,
        Ok(first)
    );
    // Other accounts have their own limit.
    tigase(gw, "bob@example.org/a", &endpoint(3)).await.unwrap();
    // Removing one makes room.
    let gone = command(
        "alice@example.org/a",
        "unregister-device",
        &[("provider", "webpush"), ("device-token", &endpoint(2))],
    );
    common::route(gw, gone).await.unwrap();
    tigase(gw, "alice@example.org/a", &endpoint(3))
        .await
        .unwrap();
    assert_eq!(gw.core.store.count().await.unwrap(), 3);
}

#[tokio::test]
async fn the_domain_rate_counts_new_devices_only() {
    let f = gateway("rate_per_domain_per_minute = 2").await;
    let gw = &f.gw;
    let known = tigase(gw, "a@example.org", &endpoint(1)).await.unwrap();
    tigase(gw, "b@example.org", &endpoint(2)).await.unwrap();
    let before = refused("register-device", "domain_rate");
    match tigase(gw, "c@example.org", &endpoint(3)).await {
        Err((ErrorType::Wait, DefinedCondition::PolicyViolation, text)) => assert!(
            text.starts_with(
                "too many new registrations from example.org (limit 2 a minute); try again in "
            ),
            "{text}"
        ),
        other => panic!("expected a wait policy-violation, got {other:?}"),
    }
    assert_eq!(refused("register-device", "domain_rate"), before + 1);
    // While the bucket is empty, known devices still re-register (a server restart brings
    // everyone back at once) …
    for _ in 0..5 {
        assert_eq!(
            tigase(gw, "a@example.org", &endpoint(1)).await,
            Ok(known.clone())
        );
    }
    // … and other domains are not affected.
    tigase(gw, "c@example.net", &endpoint(3)).await.unwrap();
    assert_eq!(gw.core.store.count().await.unwrap(), 3);
}

#[tokio::test]
async fn domain_lists_decide_who_may_register() {
    let f = gateway("allow_domains = [\"*.example.org\", \"example.net\"]\ndeny_domains = [\"bad.example.org\"]").await;
    let gw = &f.gw;
    tigase(gw, "a@chat.example.org", &endpoint(1))
        .await
        .unwrap();
    tigase(gw, "a@example.net", &endpoint(2)).await.unwrap();
    let before = refused("register-device", "domain_not_allowed");
    for account in ["a@bad.example.org", "a@example.org", "a@example.com"] {
        let domain = account.split('@').nth(1).unwrap();
        assert_eq!(
            tigase(gw, account, &endpoint(3)).await,
            err(
                ErrorType::Cancel,
                DefinedCondition::NotAllowed,
                &format!("accounts of {domain} may not register devices here")
            ),
            "{account}"
        );
    }
    assert_eq!(refused("register-device", "domain_not_allowed"), before + 3);
    assert_eq!(gw.core.store.count().await.unwrap(), 2);
}

#[tokio::test]
async fn every_stored_field_has_a_length_limit() {
    let f = gateway("").await;
    let gw = &f.gw;
    let long = |n: usize| "a".repeat(n);
    let url = |n: usize| format!("{}{}", endpoint(0), "a".repeat(n - endpoint(0).len()));
    let too_long = |field: &str, max: usize| {
        err(
            ErrorType::Modify,
            DefinedCondition::NotAcceptable,
            &format!("field '{field}' is too long (limit {max} bytes)"),
        )
    };
    let long_node = format!("register-push-{}", long(300));
    /// Command node, form fields, answer.
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, Answer);
    let cases: Vec<Case> = vec![
        (
            "register-device",
            vec![("provider", "webpush".into()), ("device-token", url(4097))],
            too_long("device-token", 4096),
        ),
        (
            "register-device",
            vec![
                ("provider", "webpush".into()),
                ("device-token", endpoint(1)),
                ("device-second-token", long(4097)),
            ],
            too_long("device-second-token", 4096),
        ),
        (
            "register-device",
            vec![("provider", long(257)), ("device-token", endpoint(1))],
            too_long("provider", 256),
        ),
        (
            "register-device",
            vec![
                ("provider", "webpush".into()),
                ("device-token", endpoint(1)),
                ("p256dh", long(257)),
                ("auth", "x".into()),
            ],
            too_long("p256dh", 256),
        ),
        (
            "register-device",
            vec![
                ("provider", "webpush".into()),
                ("device-token", endpoint(1)),
                ("p256dh", "x".into()),
                ("auth", long(257)),
            ],
            too_long("auth", 256),
        ),
        (
            "unregister-device",
            vec![("provider", "webpush".into()), ("device-token", long(4097))],
            too_long("device-token", 4096),
        ),
        (
            "register-push-webpush",
            vec![("token", long(4097)), ("device-id", "d".into())],
            too_long("token", 4096),
        ),
        (
            "register-push-webpush",
            vec![("token", endpoint(1)), ("device-id", long(1025))],
            too_long("device-id", 1024),
        ),
        (
            "register-push-webpush",
            vec![("token", endpoint(1)), ("android-id", long(1025))],
            too_long("android-id", 1024),
        ),
        (
            "register-push-webpush",
            vec![
                ("token", endpoint(1)),
                ("device-id", "d".into()),
                ("muc", format!("{}@muc.example.org", long(3072))),
            ],
            too_long("muc", 3071),
        ),
        (
            "unregister-push-webpush",
            vec![
                ("device-id", "d".into()),
                ("channel", format!("{}@muc.example.org", long(3072))),
            ],
            too_long("channel", 3071),
        ),
        (
            &long_node,
            vec![("token", endpoint(1)), ("device-id", "d".into())],
            too_long("provider", 256),
        ),
    ];
    let before = refused("other", "too_long");
    for (node, fields, want) in &cases {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = run(gw, command("alice@example.org/a", node, &fields)).await;
        assert_eq!(
            &got,
            want,
            "{node} {:?}",
            fields.iter().map(|f| f.0).collect::<Vec<_>>()
        );
    }
    // The one on an unknown command node is counted as "other".
    assert_eq!(refused("other", "too_long"), before + 1);
    assert_eq!(
        gw.core.store.count().await.unwrap(),
        0,
        "nothing was stored"
    );

    // At the limits: accepted (a muc that is not a JID is still refused after its length).
    let at_limit = command(
        "alice@example.org/a",
        "register-push-webpush",
        &[("token", &endpoint(1)), ("device-id", &long(1024))],
    );
    run(gw, at_limit).await.unwrap();
    let not_a_jid = command(
        "alice@example.org/a",
        "register-push-webpush",
        &[
            ("token", &endpoint(1)),
            ("device-id", "d"),
            ("muc", "@muc.example.org"),
        ],
    );
    assert!(matches!(
        run(gw, not_a_jid).await,
        Err((_, DefinedCondition::BadRequest, _))
    ));
}

#[tokio::test]
async fn an_endpoint_name_leading_only_inside_is_refused_at_registration() {
    let f = gateway("").await;
    let gw = &f.gw;
    let by_name = "http://localhost:9/push/1";
    let before = refused("register-device", "endpoint_not_public");
    let strict = command(
        "alice@example.org/a",
        "register-device",
        &[("provider", "strict"), ("device-token", by_name)],
    );
    match run(gw, strict).await {
        Err((ErrorType::Modify, DefinedCondition::NotAcceptable, text)) => assert!(
            text.contains("localhost resolves only to non-public addresses"),
            "{text}"
        ),
        other => panic!("expected not-acceptable, got {other:?}"),
    }
    assert_eq!(
        refused("register-device", "endpoint_not_public"),
        before + 1
    );
    assert_eq!(gw.core.store.count().await.unwrap(), 0);
    // Where the provider allows private addresses, the same name is fine.
    tigase(gw, "alice@example.org/a", by_name).await.unwrap();
}
