//! Legacy provider names (`[provider_aliases]`): a client or server configured for the service
//! pushgate replaces (Tigase's `fcm-xmpp-api`, mod_push_appserver's `fcm` type, a p2
//! `register-push-fcm`) keeps working unchanged, and what it registers is stored under the
//! provider's own id, so publishes, unregistering and the operator's tools see one provider.

mod common;

use std::time::Duration;

use common::{
    COMPONENT, HttpServer, PushEndpoint, TestGateway, ask, form_values, is_result, requester,
    result_of,
};
use pushgate::config::HttpConfig;
use reqwest::StatusCode;
use serde_json::json;

fn config() -> String {
    format!(
        "{COMPONENT}[providers.webpush]\nkind = \"webpush\"\nallow_http = true\n\
         allow_private_addresses = true\n\
         [provider_aliases]\n\"fcm-xmpp-api\" = \"webpush\"\nfcm = \"webpush\"\n"
    )
}

const ALICE: &str = "alice@example.org/phone";

#[tokio::test]
async fn registrations_under_an_alias_are_stored_under_the_provider() {
    let s = HttpServer::start(
        TestGateway::sqlite(&config()).await,
        HttpConfig::default(),
        Duration::from_secs(5),
    )
    .await;
    let gw = &s.gw;
    let endpoint = PushEndpoint::start().await;

    // Siskin configured for Tigase's FCM id.
    let token = endpoint.url("tigase");
    let reply = ask(
        gw,
        requester(ALICE).submit(
            "register-device",
            &[("provider", "fcm-xmpp-api"), ("device-token", &token)],
        ),
    )
    .await;
    let node = form_values(result_of(&reply).expect("a command"), "node")
        .pop()
        .expect("a node");
    let reg = gw.core.store.find_by_node(&node).await.unwrap().unwrap();
    assert_eq!(reg.provider.as_str(), "webpush");

    // Conversations' register-push-fcm.
    let p2_token = endpoint.url("p2");
    let reply = ask(
        gw,
        requester(ALICE).submit(
            "register-push-fcm",
            &[("token", &p2_token), ("device-id", "phone")],
        ),
    )
    .await;
    let command = result_of(&reply).expect("a command");
    let p2_node = form_values(command, "node").pop().unwrap();
    let secret = form_values(command, "secret").pop().unwrap();
    let reg = gw.core.store.find_by_node(&p2_node).await.unwrap().unwrap();
    assert_eq!(reg.provider.as_str(), "webpush");
    let published = ask(
        gw,
        requester("example.org").publish(
            Some(&p2_node),
            Some(&secret),
            &[("message-count", "1"), ("last-message-body", "hi")],
        ),
    )
    .await;
    assert!(is_result(&published), "{published:?}");
    assert_eq!(endpoint.accepted_for("p2"), 1);

    // The REST unregister and the unregister command take the alias too.
    let rest =
        json!({"account": "alice@example.org", "provider": "fcm-xmpp-api", "device-token": token});
    assert_eq!(
        s.unregister(&rest).await,
        (StatusCode::OK, json!({"result": "success"}))
    );
    assert!(gw.core.store.find_by_node(&node).await.unwrap().is_none());
    let reply = ask(
        gw,
        requester(ALICE).submit("unregister-push-fcm", &[("device-id", "phone")]),
    )
    .await;
    assert!(is_result(&reply), "{reply:?}");
    assert!(
        gw.core
            .store
            .find_by_node(&p2_node)
            .await
            .unwrap()
            .is_none()
    );
}

/// Clients that look for their provider's id in disco (Siskin) or for a `register-push-<id>`
/// command (Conversations) find the aliases.
#[tokio::test]
async fn aliases_are_advertised() {
    let gw = TestGateway::sqlite(&config()).await;
    let info = String::from(result_of(&ask(&gw, requester(ALICE).disco_info()).await).unwrap());
    for feature in ["var='webpush'", "var='fcm-xmpp-api'", "var='fcm'"] {
        assert!(info.contains(feature), "missing {feature}: {info}");
    }
    let items = String::from(
        result_of(
            &ask(
                &gw,
                requester(ALICE).disco_items("http://jabber.org/protocol/commands"),
            )
            .await,
        )
        .unwrap(),
    );
    assert!(items.contains("node='register-push-fcm'"), "{items}");
}

#[test]
fn aliases_must_name_a_provider_and_no_provider_id() {
    use pushgate::config::Config;
    let base = format!("{COMPONENT}[providers.webpush]\nkind = \"webpush\"\n");
    for (aliases, key) in [
        ("x = \"nope\"\n", "provider_aliases.x"),
        ("webpush = \"webpush\"\n", "provider_aliases.webpush"),
        ("\"a b\" = \"webpush\"\n", "provider_aliases.a b"),
    ] {
        let e = Config::from_toml_str(&format!("{base}[provider_aliases]\n{aliases}")).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
}
