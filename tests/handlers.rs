//! The request handlers in-process, without an XMPP server: publishes and commands go through
//! pushgate's real router, store and WebPush provider to a local push service, and Siskin's
//! REST unregister through the real HTTP server on loopback. The Prosody suite (tests/e2e)
//! stays the end-to-end proof; these pin each decision down on its own.
//!
//! Covered: who may publish to a node (XEP-0357 §5,
//! https://xmpp.org/extensions/xep-0357.html), what a dead token does to the registration, both
//! registration dialects in both XEP-0050 flows (two-stage: execute → blank form → complete;
//! single-stage: the submitted form with the first execute), and unregistering by command and
//! by REST.

#[macro_use]
mod common;

use std::future::Future;
use std::time::Duration;

use common::{
    COMPONENT, HttpServer, PushEndpoint, TestGateway, ask, error_of, form_values, is_result,
    on_postgres_gateway, requester, result_of, stored,
};
use pushgate::config::HttpConfig;
use pushgate::fronts::xmpp::Component;
use pushgate::ids::Dialect;
use reqwest::StatusCode;
use serde_json::json;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

/// One WebPush provider that takes loopback endpoints, as the local push service is.
fn config() -> String {
    format!(
        "{COMPONENT}[providers.webpush]\nkind = \"webpush\"\nallow_http = true\n\
         allow_private_addresses = true\n"
    )
}

const ALICE: &str = "alice@example.org/phone";
/// The server that hosts Alice's account, as it publishes.
const ALICES_SERVER: &str = "example.org";
/// A message body makes a push that is never coalesced, so every publish reaches the endpoint.
const SUMMARY: &[(&str, &str)] = &[("message-count", "1"), ("last-message-body", "hi")];

async fn on_sqlite<F, Fut>(scenario: F)
where
    F: FnOnce(TestGateway) -> Fut,
    Fut: Future<Output = ()>,
{
    scenario(TestGateway::sqlite(&config()).await).await
}

async fn on_postgres<F, Fut>(scenario: F)
where
    F: FnOnce(TestGateway) -> Fut,
    Fut: Future<Output = ()>,
{
    on_postgres_gateway("pushgate_h", &config(), scenario).await
}

// ---------------------------------------------------------------------------------------------
// Reading answers

/// The `<command/>` of a command's result answer.
fn command_of(iq: &Iq) -> &Element {
    result_of(iq).unwrap_or_else(|| panic!("a command answer without a command: {iq:?}"))
}

/// The single value of field `var` in the command's form.
fn value(command: &Element, var: &str) -> String {
    match form_values(command, var).as_slice() {
        [v] => v.clone(),
        other => panic!("expected one value of {var}, got {other:?}: {command:?}"),
    }
}

/// The fields a blank form asks for, in order.
fn asked_fields(command: &Element) -> Vec<String> {
    let form = command
        .get_child("x", "jabber:x:data")
        .unwrap_or_else(|| panic!("no form in {command:?}"));
    assert_eq!(form.attr("type"), Some("form"), "{command:?}");
    form.children()
        .filter(|f| f.name() == "field")
        .filter_map(|f| f.attr("var").map(str::to_owned))
        .collect()
}

fn status(command: &Element) -> &str {
    command.attr("status").unwrap_or_default()
}

/// The `item-not-found` every refused publish of an unknown, foreign or wrongly authorised
/// node gets.
fn no_such_node() -> (ErrorType, DefinedCondition, String) {
    (
        ErrorType::Cancel,
        DefinedCondition::ItemNotFound,
        "no such node".to_owned(),
    )
}

// ---------------------------------------------------------------------------------------------
// Registering

/// Registers a WebPush device of Alice with p2's single-stage command: (node, secret).
async fn p2_device(gw: &Component, token: &str, device_id: &str) -> (String, String) {
    let reply = ask(
        gw,
        requester(ALICE).submit(
            "register-push-webpush",
            &[("token", token), ("device-id", device_id)],
        ),
    )
    .await;
    let command = command_of(&reply);
    (value(command, "node"), value(command, "secret"))
}

/// Registers a WebPush device of Alice with Tigase's single-stage command: the node.
async fn tigase_device(gw: &Component, token: &str) -> String {
    let reply = ask(
        gw,
        requester(ALICE).submit(
            "register-device",
            &[("provider", "webpush"), ("device-token", token)],
        ),
    )
    .await;
    value(command_of(&reply), "node")
}

/// Runs command `node` as Alice in two stages: asks for the blank form, which must ask for
/// `asked`, then completes that session with `fields`. The blank form's answer and the
/// completed one.
async fn two_stages(
    gw: &Component,
    node: &str,
    asked: &[&str],
    fields: &[(&str, &str)],
) -> (Iq, Iq) {
    let first = ask(gw, requester(ALICE).execute(node)).await;
    let blank = command_of(&first);
    assert_eq!(status(blank), "executing");
    assert_eq!(asked_fields(blank), asked);
    let session = blank.attr("sessionid").expect("a session");
    let second = ask(gw, requester(ALICE).complete(node, session, fields)).await;
    let done = command_of(&second);
    assert_eq!(status(done), "completed");
    assert_eq!(done.attr("sessionid"), Some(session));
    (first, second)
}

async fn exists(gw: &Component, node: &str) -> bool {
    gw.core
        .store
        .find_by_node(node)
        .await
        .expect("lookup")
        .is_some()
}

on_both_backends!(
    tigase_registration_in_both_stages,
    p2_registration_in_both_stages,
    tigase_unregister_in_both_stages,
    p2_unregister_in_both_stages,
);

/// Tigase's `register-device`: the blank form offers the providers, the result form carries the
/// node and the features Siskin reads, and the row is a Tigase registration without a secret.
async fn tigase_registration_in_both_stages(gw: TestGateway) {
    let token = "http://127.0.0.1:9/push/two-stage";
    let (first, second) = two_stages(
        &gw,
        "register-device",
        &["provider", "device-token", "device-second-token"],
        &[("provider", "webpush"), ("device-token", token)],
    )
    .await;
    assert!(
        String::from(command_of(&first)).contains("<value>webpush</value>"),
        "the provider is offered: {first:?}"
    );
    let done = command_of(&second);
    assert_eq!(
        form_values(done, "features"),
        ["tigase:push:encrypt:0", "tigase:push:priority:0"]
    );
    assert_eq!(
        value(done, "max-payload-size"),
        gw.max_payload_size.to_string()
    );
    let node = value(done, "node");
    let row = stored(&gw.core.store, &node).await;
    assert_eq!(row.dialect, Dialect::Tigase);
    assert_eq!(row.account.as_str(), "alice@example.org");
    assert_eq!(row.provider.as_str(), "webpush");
    assert_eq!(row.token.as_str(), token);
    assert!(row.secret.is_none(), "Tigase registrations have no secret");

    // Single-stage: the same device again keeps its node; another one gets its own.
    assert_eq!(tigase_device(&gw, token).await, node);
    let other = tigase_device(&gw, "http://127.0.0.1:9/push/single-stage").await;
    assert_ne!(other, node);
    assert_eq!(
        stored(&gw.core.store, &other).await.token.as_str(),
        "http://127.0.0.1:9/push/single-stage"
    );
    assert_eq!(gw.core.store.count().await.expect("count"), 2);
}

/// p2's `register-push-<provider>`: the result form carries our JID, the node and the secret
/// publishes must present, and the row is a p2 registration of that device id.
async fn p2_registration_in_both_stages(gw: TestGateway) {
    let token = "http://127.0.0.1:9/push/phone";
    let (_, second) = two_stages(
        &gw,
        "register-push-webpush",
        &["token", "device-id", "muc"],
        &[("token", token), ("device-id", "phone")],
    )
    .await;
    let done = command_of(&second);
    assert_eq!(value(done, "jid"), "push.test");
    let (node, secret) = (value(done, "node"), value(done, "secret"));
    assert_ne!(node, secret);
    let row = stored(&gw.core.store, &node).await;
    assert_eq!(row.dialect, Dialect::P2);
    assert_eq!(row.account.as_str(), "alice@example.org");
    assert_eq!(row.device_id.as_deref(), Some("phone"));
    assert_eq!(row.token.as_str(), token);
    assert!(row.secret.as_ref().is_some_and(|s| s.matches(&secret)));

    // Single-stage: the same device with a new token keeps node and secret (Conversations
    // re-registers so); another device gets its own.
    let moved = "http://127.0.0.1:9/push/phone-2";
    assert_eq!(
        p2_device(&gw, moved, "phone").await,
        (node.clone(), secret.clone())
    );
    assert_eq!(stored(&gw.core.store, &node).await.token.as_str(), moved);
    let (tablet, tablet_secret) = p2_device(&gw, token, "tablet").await;
    assert_ne!(tablet, node);
    assert_ne!(tablet_secret, secret);
    assert_eq!(gw.core.store.count().await.expect("count"), 2);
}

/// `unregister-device`: the blank form asks for provider and token only; either flow removes
/// just the named device, and a second try is `item-not-found`.
async fn tigase_unregister_in_both_stages(gw: TestGateway) {
    let (one, two) = ("http://127.0.0.1:9/push/one", "http://127.0.0.1:9/push/two");
    let (node_one, node_two) = (tigase_device(&gw, one).await, tigase_device(&gw, two).await);

    let (_, done) = two_stages(
        &gw,
        "unregister-device",
        &["provider", "device-token"],
        &[("provider", "webpush"), ("device-token", one)],
    )
    .await;
    assert!(String::from(command_of(&done)).contains("Device unregistered"));
    assert!(!exists(&gw, &node_one).await);
    assert!(exists(&gw, &node_two).await, "only the named device goes");

    let single = |token| {
        requester(ALICE).submit(
            "unregister-device",
            &[("provider", "webpush"), ("device-token", token)],
        )
    };
    assert!(is_result(&ask(&gw, single(two)).await));
    assert!(!exists(&gw, &node_two).await);
    for token in [one, two] {
        let again = ask(&gw, single(token)).await;
        assert_eq!(
            error_of(&again),
            (
                ErrorType::Cancel,
                DefinedCondition::ItemNotFound,
                "no such registration".to_owned()
            ),
            "{token} was removed already"
        );
    }
}

/// `unregister-push-<provider>`: the blank form asks for the device id (and room), no token;
/// either flow removes just that device, and a second try is `item-not-found`.
async fn p2_unregister_in_both_stages(gw: TestGateway) {
    let token = "http://127.0.0.1:9/push/p2";
    let (phone, _) = p2_device(&gw, token, "phone").await;
    let (tablet, _) = p2_device(&gw, token, "tablet").await;

    two_stages(
        &gw,
        "unregister-push-webpush",
        &["device-id", "muc"],
        &[("device-id", "phone")],
    )
    .await;
    assert!(!exists(&gw, &phone).await);
    assert!(exists(&gw, &tablet).await, "only the named device goes");

    let single =
        |device| requester(ALICE).submit("unregister-push-webpush", &[("device-id", device)]);
    assert!(is_result(&ask(&gw, single("tablet")).await));
    assert!(!exists(&gw, &tablet).await);
    for device in ["phone", "tablet"] {
        let again = ask(&gw, single(device)).await;
        assert_eq!(
            error_of(&again).1,
            DefinedCondition::ItemNotFound,
            "{device} was removed already"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Who may publish

/// A gateway, a push service, and a p2 device of Alice's on it: (gateway, endpoint, node,
/// secret).
async fn publishing_setup() -> (TestGateway, PushEndpoint, String, String) {
    let gw = TestGateway::sqlite(&config()).await;
    let endpoint = PushEndpoint::start().await;
    let (node, secret) = p2_device(&gw, &endpoint.url("alice"), "phone").await;
    (gw, endpoint, node, secret)
}

/// What `from` gets for publishing to `node` with `secret`.
async fn publish(gw: &Component, from: &str, node: Option<&str>, secret: Option<&str>) -> Iq {
    ask(gw, requester(from).publish(node, secret, SUMMARY)).await
}

/// A refused publish delivers nothing, and the registration stays.
async fn refused_without_effect(gw: &Component, endpoint: &PushEndpoint, node: &str) {
    assert_eq!(endpoint.received(), 0, "nothing was delivered");
    assert!(exists(gw, node).await, "the registration stays");
}

#[tokio::test]
async fn the_accounts_server_with_the_secret_is_delivered() {
    let (gw, endpoint, node, secret) = publishing_setup().await;
    let reply = publish(&gw, ALICES_SERVER, Some(&node), Some(&secret)).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(result_of(&reply), None);
    assert_eq!(endpoint.received(), 1);
}

#[tokio::test]
async fn a_wrong_or_missing_secret_is_item_not_found() {
    let (gw, endpoint, node, secret) = publishing_setup().await;
    let wrong = format!("{secret}x");
    for presented in [Some(wrong.as_str()), Some(""), None] {
        let reply = publish(&gw, ALICES_SERVER, Some(&node), presented).await;
        assert_eq!(error_of(&reply), no_such_node(), "secret {presented:?}");
    }
    refused_without_effect(&gw, &endpoint, &node).await;
}

#[tokio::test]
async fn a_publish_from_another_domain_is_item_not_found() {
    let (gw, endpoint, node, secret) = publishing_setup().await;
    for server in ["example.net", "sub.example.org"] {
        let reply = publish(&gw, server, Some(&node), Some(&secret)).await;
        assert_eq!(error_of(&reply), no_such_node(), "from {server}");
    }
    refused_without_effect(&gw, &endpoint, &node).await;
}

/// Publishes come from the account's server (a domain JID); a user's JID, full or bare, is
/// refused before the node is even looked up, whatever it presents.
#[tokio::test]
async fn a_publish_from_a_user_jid_is_forbidden() {
    let (gw, endpoint, node, secret) = publishing_setup().await;
    for user in [ALICE, "alice@example.org", "example.org/resource"] {
        let reply = publish(&gw, user, Some(&node), Some(&secret)).await;
        assert_eq!(
            error_of(&reply),
            (
                ErrorType::Auth,
                DefinedCondition::Forbidden,
                "publishes come from servers".to_owned()
            ),
            "from {user}"
        );
    }
    refused_without_effect(&gw, &endpoint, &node).await;
}

#[tokio::test]
async fn an_unknown_or_missing_node_is_item_not_found() {
    let (gw, endpoint, node, secret) = publishing_setup().await;
    let unknown = format!("{node}x");
    for target in [Some(unknown.as_str()), Some(""), None] {
        let reply = publish(&gw, ALICES_SERVER, target, Some(&secret)).await;
        assert_eq!(error_of(&reply), no_such_node(), "node {target:?}");
    }
    refused_without_effect(&gw, &endpoint, &node).await;
}

/// A prober learns nothing about which nodes exist: an unknown node, a known one from another
/// domain and a known one with a wrong secret get the same error, to the last field.
#[tokio::test]
async fn refused_publishes_look_the_same_from_outside() {
    let (gw, _endpoint, node, secret) = publishing_setup().await;
    let answers = [
        publish(&gw, ALICES_SERVER, Some("no-such-node"), Some(&secret)).await,
        publish(&gw, "example.net", Some(&node), Some(&secret)).await,
        publish(&gw, ALICES_SERVER, Some(&node), Some("wrong")).await,
    ];
    let errors: Vec<String> = answers
        .iter()
        .map(|iq| match iq {
            Iq::Error { error, payload, .. } => format!("{error:?} {payload:?}"),
            other => panic!("expected an error, got {other:?}"),
        })
        .collect();
    assert!(errors.iter().all(|e| *e == errors[0]), "{errors:#?}");
}

// ---------------------------------------------------------------------------------------------
// Dead tokens

/// The push service answers 404 or 410, the subscription is gone: the server is told
/// `item-not-found`, so it disables push, and the registration goes.
#[tokio::test]
async fn a_dead_token_is_item_not_found_and_removes_the_registration() {
    let (gw, endpoint, phone, _) = publishing_setup().await;
    for status in [404, 410] {
        let device = format!("dead-{status}");
        let (node, secret) = p2_device(&gw, &endpoint.url(&device), &device).await;
        endpoint.answer_with(status);
        let before = endpoint.received();
        let reply = publish(&gw, ALICES_SERVER, Some(&node), Some(&secret)).await;
        assert_eq!(endpoint.received(), before + 1, "{status}: delivered");
        assert_eq!(
            error_of(&reply),
            (
                ErrorType::Cancel,
                DefinedCondition::ItemNotFound,
                "device token is no longer valid".to_owned()
            ),
            "{status}"
        );
        assert!(!exists(&gw, &node).await, "{status}: registration removed");
    }
    assert!(exists(&gw, &phone).await, "other devices stay");
}

/// The device re-registers with a new token while its old token's dead verdict is on the way:
/// the fresh registration is kept, and the server is told to try again (`wait`) instead of
/// disabling push.
#[tokio::test]
async fn a_dead_verdict_for_a_replaced_token_keeps_the_registration() {
    let (gw, endpoint, node, secret) = publishing_setup().await;
    endpoint.answer_with(410);
    endpoint.hold();
    let in_flight = tokio::spawn({
        let gw = gw.gw.clone();
        let (node, secret) = (node.clone(), secret.clone());
        async move { publish(&gw, ALICES_SERVER, Some(&node), Some(&secret)).await }
    });
    endpoint.arrived().await;

    let fresh = endpoint.url("alice-renewed");
    assert_eq!(
        p2_device(&gw, &fresh, "phone").await,
        (node.clone(), secret.clone())
    );
    endpoint.release();
    let reply = tokio::time::timeout(Duration::from_secs(10), in_flight)
        .await
        .expect("answered")
        .expect("publish task");
    assert!(
        is_result(&reply),
        "queued for retry, which goes to the fresh token: {reply:?}"
    );
    assert_eq!(stored(&gw.core.store, &node).await.token.as_str(), fresh);
    assert_eq!(gw.core.store.queue_depth().await.unwrap().rows, 1);
}

// ---------------------------------------------------------------------------------------------
// REST unregister

/// Siskin's `POST /unregister-device/{component}` removes the Tigase registration of that
/// account, provider and token, and nothing else; whatever does not match is a 404
/// "not found".
#[tokio::test]
async fn rest_unregister_removes_the_tigase_registration_only() {
    let s = HttpServer::start(
        TestGateway::sqlite(&config()).await,
        HttpConfig::default(),
        Duration::from_secs(5),
    )
    .await;
    let token = "http://127.0.0.1:9/push/siskin";
    let node = tigase_device(&s.gw, token).await;
    // A p2 registration with the same token is not Siskin's to remove.
    let (p2_node, _) = p2_device(&s.gw, token, "phone").await;
    let request = |account: &str, provider: &str, token: &str| json!({"account": account, "provider": provider, "device-token": token});
    let not_found = (
        StatusCode::NOT_FOUND,
        json!({"result": "failure", "reason": "not found"}),
    );
    for wrong in [
        request("bob@example.org", "webpush", token),
        request("alice@example.org", "up", token),
        request(
            "alice@example.org",
            "webpush",
            "http://127.0.0.1:9/push/other",
        ),
    ] {
        assert_eq!(s.unregister(&wrong).await, not_found, "{wrong}");
    }
    assert!(exists(&s.gw, &node).await);

    let right = request("alice@example.org", "webpush", token);
    assert_eq!(
        s.unregister(&right).await,
        (StatusCode::OK, json!({"result": "success"}))
    );
    assert!(!exists(&s.gw, &node).await);
    assert!(exists(&s.gw, &p2_node).await, "the p2 registration stays");
    assert_eq!(s.unregister(&right).await, not_found, "removed already");
}
