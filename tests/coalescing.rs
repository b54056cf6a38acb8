//! Low-priority pushes are coalesced per device; important ones always go through.
//!
//! Publishes go through pushgate's real router, store (SQLite) and WebPush provider to a local
//! HTTP endpoint that counts what reaches it.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use pushgate::fronts::xmpp::Component;
use pushgate::ids::{BareJid, DeviceToken, Dialect, ProviderId};
use pushgate::storage::{Admission, NewRegistration};
use pushgate_test_support::http1::created_endpoint;
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;

/// An HTTP/1.1 endpoint that answers every request 201 and counts them.
async fn endpoint() -> (String, Arc<AtomicUsize>) {
    let count = Arc::new(AtomicUsize::new(0));
    let seen = count.clone();
    let addr = created_endpoint(move |_: &[u8]| {
        seen.fetch_add(1, Ordering::SeqCst);
    })
    .await
    .unwrap();
    (format!("http://{addr}/push/device-1"), count)
}

fn publish(node: &str, body: Option<&str>) -> Stanza {
    let body_field = body
        .map(|b| format!("<field var='last-message-body'><value>{b}</value></field>"))
        .unwrap_or_default();
    let xml = format!(
        "<iq xmlns='jabber:component:accept' type='set' id='p' from='example.org' to='push.test'>\
           <pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='{node}'><item>\
             <notification xmlns='urn:xmpp:push:0'><x xmlns='jabber:x:data' type='form'>\
               <field var='FORM_TYPE'><value>urn:xmpp:push:summary</value></field>\
               <field var='message-count'><value>1</value></field>{body_field}\
             </x></notification></item></publish></pubsub></iq>"
    );
    Iq::try_from(xml.parse::<Element>().unwrap())
        .unwrap()
        .into()
}

async fn answered_result(gw: &Component, stanza: Stanza) {
    match common::route(gw, stanza).await {
        Some(Stanza::Iq(Iq::Result { .. })) => {}
        other => panic!("expected a result, got {other:?}"),
    }
}

#[tokio::test]
async fn low_priority_bursts_become_one_push_and_messages_always_go() {
    let gw = common::TestGateway::sqlite(
        "[component]\njid = \"push.test\"\nsecret = \"s\"\n\
         [registration]\nlow_priority_interval_secs = 10\n\
         [providers.webpush]\nkind = \"webpush\"\nallow_http = true\nallow_private_addresses = true\n",
    )
    .await;
    let (url, reached) = endpoint().await;
    let register = |token: &str| NewRegistration {
        dialect: Dialect::Tigase,
        provider: ProviderId::new("webpush"),
        account: "alice@example.org".parse::<BareJid>().unwrap(),
        device_id: None,
        muc: None,
        token: DeviceToken::new(token),
        second_token: None,
        webpush_keys: None,
    };
    let room = Admission {
        max_per_account: 20,
        may_add: true,
    };
    let reg = gw.core.store.register(register(&url), room).await.unwrap();
    let node = reg.registration.node.as_str().to_owned();

    // A burst of chat-state publishes (no body): the first wakes the device, the rest are
    // answered result and held back.
    for _ in 0..5 {
        answered_result(&gw, publish(&node, None)).await;
    }
    assert_eq!(
        reached.load(Ordering::SeqCst),
        1,
        "one low-priority push per interval"
    );

    // Messages are never held back, even inside the interval.
    answered_result(&gw, publish(&node, Some("hello"))).await;
    answered_result(&gw, publish(&node, Some("again"))).await;
    assert_eq!(reached.load(Ordering::SeqCst), 3);

    // Devices are coalesced independently.
    let other = gw
        .core
        .store
        .register(register(&format!("{url}-2")), room)
        .await
        .unwrap()
        .registration;
    answered_result(&gw, publish(other.node.as_str(), None)).await;
    assert_eq!(reached.load(Ordering::SeqCst), 4);

    let metrics = pushgate::metrics::render();
    assert!(
        metrics.contains("pushgate_publishes_total{outcome=\"coalesced\"} 4"),
        "{metrics}"
    );
}
