//! mod_push_appserver's `v1-register-push` / `v1-unregister-push` dialect, with the exact shapes
//! older Monal sends (its FORM_TYPE, `type` apns, `node` = identifierForVendor): the node is the
//! client's, the secret tells accounts apart, and publishes need both. Delivered to a local
//! HTTP/2 APNs; `type` values are provider aliases, as an operator migrating from
//! mod_push_appserver configures them.

mod common;

use common::{COMPONENT, TestGateway, ask, error_of, form_values, is_result, requester, result_of};
use pushgate_test_support::apns::MockApns;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

const FORM_TYPE: &str = "https://github.com/tmolitor-stud-tu/mod_push_appserver/#v1-register-push";
const UNREGISTER_FORM_TYPE: &str =
    "https://github.com/tmolitor-stud-tu/mod_push_appserver/#v1-unregister-push";
/// Monal's node: the device's identifierForVendor.
const NODE: &str = "5D8C1A2B-3C4D-4E5F-8A9B-0C1D2E3F4A5B";
const TOKEN: &str = "aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00aa00";

struct World {
    gw: TestGateway,
    apns: MockApns,
    _dir: tempfile::TempDir,
}

async fn world() -> World {
    let (apns, dir, section) = common::apns_sink("im.monal.Monal").await;
    let toml = format!("{COMPONENT}{section}[provider_aliases]\napns = \"apns-monal\"\n")
        .replace("[providers.apns]", "[providers.apns-monal]");
    World {
        gw: TestGateway::sqlite(&toml).await,
        apns,
        _dir: dir,
    }
}

/// Registers `token` for `account`'s phone as Monal does: (node, secret) of the result.
async fn register(w: &World, account: &str, token: &str) -> (String, String) {
    let reply = ask(
        &w.gw,
        requester(&format!("{account}/Monal-iOS.1")).submit(
            "v1-register-push",
            &[
                ("FORM_TYPE", FORM_TYPE),
                ("type", "apns"),
                ("node", NODE),
                ("token", token),
            ],
        ),
    )
    .await;
    let command = result_of(&reply).unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(form_values(command, "jid"), vec!["push.test".to_owned()]);
    (
        form_values(command, "node").pop().unwrap(),
        form_values(command, "secret").pop().unwrap(),
    )
}

async fn publish(w: &World, server: &str, secret: Option<&str>, summary: &[(&str, &str)]) -> Iq {
    ask(
        &w.gw,
        requester(server).publish(Some(NODE), secret, summary),
    )
    .await
}

#[tokio::test]
async fn the_node_is_the_clients_and_publishes_need_its_secret() {
    let w = world().await;
    let (node, secret) = register(&w, "alice@example.org", TOKEN).await;
    assert_eq!(node, NODE, "the node is echoed");
    let body = [
        ("message-count", "1"),
        ("last-message-sender", "bob@example.org"),
        ("last-message-body", "lunch?"),
    ];
    let reply = publish(&w, "example.org", Some(&secret), &body).await;
    assert!(is_result(&reply), "{reply:?}");
    let r = w.apns.only_request();
    assert_eq!(r.device_token(), TOKEN);
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    let payload = r.json();
    assert_eq!(payload["aps"]["alert"]["title"], "bob@example.org");
    assert_eq!(payload["aps"]["alert"]["body"], "lunch?");
    assert_eq!(payload["aps"]["mutable-content"], 1);
    assert!(
        payload.get("account").is_none(),
        "no account for this dialect: {payload}"
    );

    for (server, secret) in [
        ("example.org", None),
        ("example.org", Some("wrong")),
        ("other.example", Some(secret.as_str())),
    ] {
        let reply = publish(&w, server, secret, &body).await;
        assert_eq!(
            error_of(&reply).1,
            DefinedCondition::ItemNotFound,
            "{server} {secret:?}"
        );
    }
    assert_eq!(w.apns.requests().len(), 1);

    // Registering again keeps the secret and takes the new token.
    let new_token = TOKEN.replace("aa", "bb");
    assert_eq!(
        register(&w, "alice@example.org", &new_token).await.1,
        secret
    );
    assert!(is_result(
        &publish(&w, "example.org", Some(&secret), &body).await
    ));
    assert_eq!(w.apns.requests().pop().unwrap().device_token(), new_token);
}

/// `last-message-priority` low without a body only wakes the app.
#[tokio::test]
async fn last_message_priority_sets_the_priority() {
    let w = world().await;
    let (_, secret) = register(&w, "alice@example.org", TOKEN).await;
    let reply = publish(
        &w,
        "example.org",
        Some(&secret),
        &[("message-count", "2"), ("last-message-priority", "low")],
    )
    .await;
    assert!(is_result(&reply), "{reply:?}");
    let r = w.apns.only_request();
    assert_eq!(r.header("apns-push-type"), Some("background"));
    assert_eq!(r.header("apns-priority"), Some("5"));
}

/// One phone (one node) with two accounts on two servers: two registrations, each server with
/// its own secret. Somebody who learns the node registers a third one of their own and takes
/// nothing over.
#[tokio::test]
async fn one_node_for_several_accounts_makes_separate_registrations() {
    let w = world().await;
    let (_, alice) = register(&w, "alice@example.org", TOKEN).await;
    let (_, carol) = register(&w, "carol@example.net", TOKEN).await;
    assert_ne!(alice, carol);
    let mallory_token = TOKEN.replace("aa", "cc");
    let (_, mallory) = register(&w, "mallory@evil.example", &mallory_token).await;
    for (server, secret) in [("example.org", &alice), ("example.net", &carol)] {
        let reply = publish(&w, server, Some(secret), &[("last-message-body", "x")]).await;
        assert!(is_result(&reply), "{server}: {reply:?}");
    }
    let tokens: Vec<String> = w
        .apns
        .requests()
        .iter()
        .map(|r| r.device_token().to_owned())
        .collect();
    assert_eq!(
        tokens,
        vec![TOKEN.to_owned(), TOKEN.to_owned()],
        "mallory's token got nothing"
    );
    assert_ne!(mallory, alice);

    // Unregistering one account's leaves the other's.
    let reply = ask(
        &w.gw,
        requester("alice@example.org/Monal-iOS.1").submit(
            "v1-unregister-push",
            &[
                ("FORM_TYPE", UNREGISTER_FORM_TYPE),
                ("type", "apns"),
                ("node", NODE),
            ],
        ),
    )
    .await;
    let command = result_of(&reply).unwrap_or_else(|| panic!("{reply:?}"));
    assert_eq!(form_values(command, "node"), vec![NODE.to_owned()]);
    let reply = publish(
        &w,
        "example.org",
        Some(&alice),
        &[("last-message-body", "x")],
    )
    .await;
    assert_eq!(error_of(&reply).1, DefinedCondition::ItemNotFound);
    let reply = publish(
        &w,
        "example.net",
        Some(&carol),
        &[("last-message-body", "x")],
    )
    .await;
    assert!(is_result(&reply), "{reply:?}");
}

#[tokio::test]
async fn bad_data_is_not_acceptable() {
    let w = world().await;
    for fields in [
        vec![
            ("FORM_TYPE", FORM_TYPE),
            ("type", "carrier-pigeon"),
            ("node", NODE),
            ("token", TOKEN),
        ],
        vec![
            ("FORM_TYPE", FORM_TYPE),
            ("type", "apns"),
            ("node", "a\tb"),
            ("token", TOKEN),
        ],
        vec![
            ("FORM_TYPE", FORM_TYPE),
            ("type", "apns"),
            ("node", NODE),
            ("token", "not hex"),
        ],
    ] {
        let reply = ask(
            &w.gw,
            requester("alice@example.org/x").submit("v1-register-push", &fields),
        )
        .await;
        let (kind, condition, _) = error_of(&reply);
        assert_eq!(
            (kind, condition),
            (ErrorType::Modify, DefinedCondition::NotAcceptable),
            "{fields:?}"
        );
    }
    let reply = ask(
        &w.gw,
        requester("alice@example.org/x")
            .submit("v1-register-push", &[("type", "apns"), ("node", NODE)]),
    )
    .await;
    assert_eq!(error_of(&reply).1, DefinedCondition::BadRequest, "no token");
    assert_eq!(w.gw.core.store.count().await.unwrap(), 0);
}

/// The same on PostgreSQL: two accounts' registrations of one node, found by node and secret.
#[tokio::test]
async fn keyed_nodes_on_postgres() {
    let (apns, _dir, section) = common::apns_sink("im.monal.Monal").await;
    let toml = format!("{COMPONENT}{section}[provider_aliases]\napns = \"apns-monal\"\n")
        .replace("[providers.apns]", "[providers.apns-monal]");
    common::on_postgres_gateway("appserver", &toml, |gw| async move {
        let w = World {
            gw,
            apns,
            _dir: tempfile::tempdir().unwrap(),
        };
        let (_, alice) = register(&w, "alice@example.org", TOKEN).await;
        let (_, carol) = register(&w, "carol@example.net", TOKEN).await;
        assert_ne!(alice, carol);
        assert!(is_result(
            &publish(
                &w,
                "example.net",
                Some(&carol),
                &[("last-message-body", "x")]
            )
            .await
        ));
        let reply = publish(
            &w,
            "example.net",
            Some(&alice),
            &[("last-message-body", "x")],
        )
        .await;
        assert_eq!(
            error_of(&reply).1,
            DefinedCondition::ItemNotFound,
            "alice's secret, carol's server"
        );
        assert_eq!(w.apns.requests().len(), 1);
    })
    .await;
}
