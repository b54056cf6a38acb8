//! The `[registration]` limits through pushgate's real router and store: commands as an XMPP
//! server hands them over, answers checked for condition, type and text, and the refusals
//! counted under their own labels.

mod common;

use common::{COMPONENT, TestGateway, ask, error_of, form_values, requester, result_of};
use pushgate::fronts::xmpp::Component;
use pushgate::metrics::METRICS;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

/// `webpush` takes loopback endpoints (as tests need); `strict` does not.
const PROVIDERS: &str = "[providers.webpush]\nkind = \"webpush\"\nallow_http = true\n\
    allow_private_addresses = true\n\
    [providers.strict]\nkind = \"webpush\"\nallow_http = true\n";

async fn gateway(registration: &str) -> TestGateway {
    TestGateway::sqlite(&format!(
        "{COMPONENT}[registration]\n{registration}\n{PROVIDERS}"
    ))
    .await
}

/// A single-stage command with a submitted form, from `from`.
fn command(from: &str, node: &str, fields: &[(&str, &str)]) -> Stanza {
    requester(from).submit(node, fields).into()
}

/// The `node` of a completed registration, or the error: (type, condition, text).
type Answer = Result<String, (ErrorType, DefinedCondition, String)>;

async fn run(gw: &Component, stanza: Stanza) -> Answer {
    let reply = ask(gw, stanza).await;
    if !common::is_result(&reply) {
        return Err(error_of(&reply));
    }
    let command = result_of(&reply).expect("a command answer");
    match form_values(command, "node").as_slice() {
        [node] => Ok(node.clone()),
        other => panic!("expected one node, got {other:?} in {command:?}"),
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
    let gw = &gateway("max_per_account = 2").await;
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
    let gw = &gateway("rate_per_domain_per_minute = 2").await;
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
    let gw = &gateway("allow_domains = [\"*.example.org\", \"example.net\"]\ndeny_domains = [\"bad.example.org\"]").await;
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
    let gw = &gateway("").await;
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
    // A valid registration of each dialect with `extra` fields added.
    let tigase_with = |extra: Vec<(&'static str, String)>| {
        let mut fields = vec![
            ("provider", "webpush".into()),
            ("device-token", endpoint(1)),
        ];
        fields.extend(extra);
        fields
    };
    let p2_with = |extra: Vec<(&'static str, String)>| {
        let mut fields = vec![("token", endpoint(1))];
        fields.extend(extra);
        fields
    };
    let in_muc = |n: usize| format!("{}@muc.example.org", long(n));
    /// Command node, form fields, the field refused and its limit.
    type Case<'a> = (&'a str, Vec<(&'a str, String)>, &'a str, usize);
    let cases: Vec<Case> = vec![
        (
            "register-device",
            vec![("provider", "webpush".into()), ("device-token", url(4097))],
            "device-token",
            4096,
        ),
        (
            "register-device",
            tigase_with(vec![("device-second-token", long(4097))]),
            "device-second-token",
            4096,
        ),
        (
            "register-device",
            vec![("provider", long(257)), ("device-token", endpoint(1))],
            "provider",
            256,
        ),
        (
            "register-device",
            tigase_with(vec![("p256dh", long(257)), ("auth", "x".into())]),
            "p256dh",
            256,
        ),
        (
            "register-device",
            tigase_with(vec![("p256dh", "x".into()), ("auth", long(257))]),
            "auth",
            256,
        ),
        (
            "unregister-device",
            vec![("provider", "webpush".into()), ("device-token", long(4097))],
            "device-token",
            4096,
        ),
        (
            "register-push-webpush",
            vec![("token", long(4097)), ("device-id", "d".into())],
            "token",
            4096,
        ),
        (
            "register-push-webpush",
            p2_with(vec![("device-id", long(1025))]),
            "device-id",
            1024,
        ),
        (
            "register-push-webpush",
            p2_with(vec![("android-id", long(1025))]),
            "android-id",
            1024,
        ),
        (
            "register-push-webpush",
            p2_with(vec![("device-id", "d".into()), ("muc", in_muc(3072))]),
            "muc",
            3071,
        ),
        (
            "unregister-push-webpush",
            vec![("device-id", "d".into()), ("channel", in_muc(3072))],
            "channel",
            3071,
        ),
        (
            &long_node,
            p2_with(vec![("device-id", "d".into())]),
            "provider",
            256,
        ),
    ];
    let before = refused("other", "too_long");
    for (node, fields, field, max) in &cases {
        let fields: Vec<(&str, &str)> = fields.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let got = run(gw, command("alice@example.org/a", node, &fields)).await;
        assert_eq!(
            got,
            too_long(field, *max),
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
    let gw = &gateway("").await;
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
