//! XEP-0357 remote disabling: a registration removed by its unregister command, by Siskin's REST
//! unregister or because its token is dead makes the component send its account the PubSub
//! affiliation-`none` notification for the node; with `registration.notify_removal = false`
//! nothing is sent.

mod common;

use std::time::Duration;

use common::{
    COMPONENT, HttpServer, PushEndpoint, TestGateway, ask, error_of, form_values, is_result,
    requester, result_of,
};
use pushgate::config::HttpConfig;
use pushgate::fronts::xmpp::Outbox;
use serde_json::json;
use xmpp_parsers::message::Message;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::DefinedCondition;

const ALICE: &str = "alice@example.org/phone";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";

fn config(extra: &str) -> String {
    format!(
        "{COMPONENT}[providers.webpush]\nkind = \"webpush\"\nallow_http = true\n\
         allow_private_addresses = true\n{extra}"
    )
}

async fn server(extra: &str) -> (HttpServer, Outbox) {
    let mut gw = TestGateway::sqlite(&config(extra)).await;
    let outbox = gw.take_outbox();
    if gw.config.registration.notify_removal {
        pushgate::fronts::xmpp::removals::forward(gw.gw.clone());
    }
    let s = HttpServer::start(gw, HttpConfig::default(), Duration::from_secs(5)).await;
    (s, outbox)
}

async fn register(s: &HttpServer, token: &str) -> String {
    let reply = ask(
        &s.gw,
        requester(ALICE).submit(
            "register-device",
            &[("provider", "webpush"), ("device-token", token)],
        ),
    )
    .await;
    form_values(result_of(&reply).expect("a command"), "node")
        .pop()
        .expect("a node")
}

/// The next message in the outbox, within a second.
async fn next_message(outbox: &mut Outbox) -> Option<Message> {
    loop {
        match tokio::time::timeout(Duration::from_secs(1), outbox.recv()).await {
            Ok(Some(Stanza::Message(m))) => return Some(m),
            Ok(Some(_)) => continue,
            Ok(None) | Err(_) => return None,
        }
    }
}

/// The message is the remote-disable notification for `node`, to Alice's bare JID.
fn assert_disables(m: &Message, node: &str) {
    assert_eq!(m.to.as_ref().unwrap().to_string(), "alice@example.org");
    assert_eq!(m.from.as_ref().unwrap().to_string(), "push.test");
    // Not stored for an offline account, so it makes no server push the other devices.
    assert_eq!(m.type_, xmpp_parsers::message::MessageType::Headline);
    let pubsub: &Element = m
        .payloads
        .iter()
        .find(|p| p.is("pubsub", NS_PUBSUB))
        .expect("a pubsub payload");
    assert_eq!(pubsub.attr("node"), Some(node));
    let affiliation = pubsub
        .get_child("affiliation", NS_PUBSUB)
        .expect("an affiliation");
    assert_eq!(affiliation.attr("jid"), Some("alice@example.org"));
    assert_eq!(affiliation.attr("affiliation"), Some("none"));
}

#[tokio::test]
async fn unregistering_and_dead_tokens_disable_remotely() {
    let (s, mut outbox) = server("").await;
    let endpoint = PushEndpoint::start().await;

    // The unregister command.
    let token = endpoint.url("a");
    let node = register(&s, &token).await;
    let reply = ask(
        &s.gw,
        requester(ALICE).submit(
            "unregister-device",
            &[("provider", "webpush"), ("device-token", &token)],
        ),
    )
    .await;
    assert!(is_result(&reply), "{reply:?}");
    assert_disables(
        &next_message(&mut outbox).await.expect("a notification"),
        &node,
    );

    // Siskin's REST unregister.
    let token = endpoint.url("b");
    let node = register(&s, &token).await;
    let body =
        json!({"account": "alice@example.org", "provider": "webpush", "device-token": token});
    assert_eq!(s.unregister(&body).await.0, reqwest::StatusCode::OK);
    assert_disables(
        &next_message(&mut outbox).await.expect("a notification"),
        &node,
    );

    // A dead token, found by a publish.
    let token = endpoint.url("c");
    let node = register(&s, &token).await;
    endpoint.answer_with(410);
    let reply = ask(
        &s.gw,
        requester("example.org").publish(
            Some(&node),
            None,
            &[("message-count", "1"), ("last-message-body", "hi")],
        ),
    )
    .await;
    assert_eq!(error_of(&reply).1, DefinedCondition::ItemNotFound);
    assert_disables(
        &next_message(&mut outbox).await.expect("a notification"),
        &node,
    );

    // Unregistering what is not there tells nobody anything.
    let reply = ask(
        &s.gw,
        requester(ALICE).submit(
            "unregister-device",
            &[("provider", "webpush"), ("device-token", &token)],
        ),
    )
    .await;
    assert_eq!(error_of(&reply).1, DefinedCondition::ItemNotFound);
    assert!(next_message(&mut outbox).await.is_none());
}

#[tokio::test]
async fn nothing_is_sent_when_turned_off() {
    let (s, mut outbox) = server("[registration]\nnotify_removal = false\n").await;
    let token = "http://127.0.0.1:9/push/x";
    register(&s, token).await;
    let reply = ask(
        &s.gw,
        requester(ALICE).submit(
            "unregister-device",
            &[("provider", "webpush"), ("device-token", token)],
        ),
    )
    .await;
    assert!(is_result(&reply), "{reply:?}");
    assert!(next_message(&mut outbox).await.is_none());
}
