//! Token-addressed publishes (monal-im/fpush's scheme, current Monal): no registration, the node
//! is the APNs token and the publish-option `pushModule` names the app, with `-sandbox` for the
//! sandbox environment. Delivered to local HTTP/2 APNs servers; every fence of this path (unknown
//! module, foreign fields, not a token, dead tokens, per-token and per-server budgets, allowed
//! servers) is tried.

mod common;

use common::{COMPONENT, TestGateway, ask, error_of, is_result, requester};
use pushgate_test_support::apns::{MockApns, Reply};
use xmpp_parsers::stanza_error::{DefinedCondition, ErrorType};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const SERVER: &str = "example.org";

/// Publish-options fields.
type Options<'a> = Vec<(&'a str, &'a str)>;

struct World {
    gw: TestGateway,
    production: MockApns,
    sandbox: MockApns,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
}

async fn world(fpush: &str) -> World {
    let (production, p_dir, p_section) = common::apns_sink("im.monal.Monal").await;
    let (sandbox, s_dir, s_section) = common::apns_sink("im.monal.Monal").await;
    let s_section = s_section.replace("[providers.apns]", "[providers.apns-sandbox]");
    let toml = format!(
        "{COMPONENT}{p_section}{s_section}\
         [providers.webpush]\nkind = \"webpush\"\nallow_http = true\nallow_private_addresses = true\n\
         {fpush}\n\
         [fpush.modules.monalProdiOS]\nprovider = \"apns\"\nsandbox_provider = \"apns-sandbox\"\n"
    );
    World {
        gw: TestGateway::sqlite(&toml).await,
        production,
        sandbox,
        _dirs: (p_dir, s_dir),
    }
}

async fn publish(
    w: &World,
    from: &str,
    node: &str,
    options: &[(&str, &str)],
) -> xmpp_parsers::iq::Iq {
    ask(
        &w.gw,
        requester(from).publish_with(Some(node), options, &[("message-count", "1")]),
    )
    .await
}

#[tokio::test]
async fn a_token_for_a_module_is_an_alert_to_its_provider() {
    let w = world("").await;
    let reply = publish(&w, SERVER, TOKEN, &[("pushModule", "monalProdiOS")]).await;
    assert!(is_result(&reply), "{reply:?}");
    let r = w.production.only_request();
    assert_eq!(r.device_token(), TOKEN);
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    assert_eq!(r.json()["aps"]["mutable-content"], 1);
    assert!(w.sandbox.requests().is_empty());

    let reply = publish(&w, SERVER, TOKEN, &[("pushModule", "monalProdiOS-sandbox")]).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(w.sandbox.only_request().device_token(), TOKEN);
}

#[tokio::test]
async fn what_is_no_token_of_a_known_module_is_refused_without_a_push() {
    let w = world("").await;
    let cases: Vec<(&str, Options, DefinedCondition)> = vec![
        (
            TOKEN,
            vec![("pushModule", "quicksyProdiOS")],
            DefinedCondition::ItemNotFound,
        ),
        (
            TOKEN,
            vec![("pushModule", "monalAlpha-sandbox")],
            DefinedCondition::ItemNotFound,
        ),
        (
            TOKEN,
            vec![("pushModule", "monalProdiOS"), ("sandbox", "true")],
            DefinedCondition::BadRequest,
        ),
        (
            "not-a-token",
            vec![("pushModule", "monalProdiOS")],
            DefinedCondition::ItemNotFound,
        ),
        // No module and no default: an unknown node, as ever.
        (TOKEN, vec![], DefinedCondition::ItemNotFound),
    ];
    for (node, options, condition) in cases {
        let reply = publish(&w, SERVER, node, &options).await;
        let (kind, got, _) = error_of(&reply);
        assert_eq!(got, condition, "{node} {options:?}");
        if condition == DefinedCondition::BadRequest {
            assert_eq!(kind, ErrorType::Modify);
        } else {
            assert_eq!(kind, ErrorType::Cancel);
        }
    }
    assert!(w.production.requests().is_empty());
}

#[tokio::test]
async fn a_dead_token_is_item_not_found_now_and_next_time_without_asking_apns() {
    let w = world("").await;
    w.production
        .script(TOKEN, vec![Reply::reason(410, "Unregistered")]);
    for _ in 0..2 {
        let reply = publish(&w, SERVER, TOKEN, &[("pushModule", "monalProdiOS")]).await;
        assert_eq!(error_of(&reply).1, DefinedCondition::ItemNotFound);
    }
    assert_eq!(w.production.requests().len(), 1);
}

/// A token gets its budget and no more (the rest answered and dropped, so the server keeps the
/// registration); a server over its budget is told to wait.
#[tokio::test]
async fn tokens_and_servers_have_budgets() {
    let w =
        world("[fpush]\npushes_per_minute_per_token = 2\npushes_per_minute_per_domain = 4\n").await;
    for _ in 0..3 {
        let reply = publish(&w, SERVER, TOKEN, &[("pushModule", "monalProdiOS")]).await;
        assert!(is_result(&reply), "{reply:?}");
    }
    assert_eq!(
        w.production.requests().len(),
        2,
        "the third push was dropped"
    );
    let other = TOKEN.replace('0', "1");
    let reply = publish(&w, SERVER, &other, &[("pushModule", "monalProdiOS")]).await;
    assert!(is_result(&reply), "{reply:?}");
    let reply = publish(&w, SERVER, &other, &[("pushModule", "monalProdiOS")]).await;
    let (kind, _, _) = error_of(&reply);
    assert_eq!(kind, ErrorType::Wait, "the server's fifth publish");
    // Another server has a budget of its own.
    let reply = publish(
        &w,
        "other.example",
        &TOKEN.replace('0', "2"),
        &[("pushModule", "monalProdiOS")],
    )
    .await;
    assert!(is_result(&reply), "{reply:?}");
}

#[tokio::test]
async fn only_allowed_servers_may_address_tokens() {
    let w = world("[fpush]\nallowed_domains = [\"example.org\", \"*.example.net\"]\n").await;
    let reply = publish(&w, "evil.example", TOKEN, &[("pushModule", "monalProdiOS")]).await;
    assert_eq!(error_of(&reply).1, DefinedCondition::ItemNotFound);
    let reply = publish(
        &w,
        "chat.example.net",
        TOKEN,
        &[("pushModule", "monalProdiOS")],
    )
    .await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(w.production.requests().len(), 1);
}

/// With a default module, a publish without publish-options to a node nobody registered is a
/// token of it; a registration's node still goes to its registration, and a publish with a
/// secret to an unknown node stays an unknown node.
#[tokio::test]
async fn the_default_module_takes_option_less_publishes_to_unknown_nodes() {
    let (production, _dir, section) = common::apns_sink("im.monal.Monal").await;
    let toml = format!(
        "{COMPONENT}{section}[providers.webpush]\nkind = \"webpush\"\nallow_http = true\n\
         allow_private_addresses = true\n\
         [fpush.modules.monalProdiOS]\nprovider = \"apns\"\ndefault = true\n"
    );
    let gw = TestGateway::sqlite(&toml).await;
    let reply = ask(&gw, requester(SERVER).publish_with(Some(TOKEN), &[], &[])).await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(production.only_request().device_token(), TOKEN);
    let reply = ask(
        &gw,
        requester(SERVER).publish(Some(TOKEN), Some("secret"), &[]),
    )
    .await;
    assert_eq!(error_of(&reply).1, DefinedCondition::ItemNotFound);

    let endpoint = common::PushEndpoint::start().await;
    let registered = ask(
        &gw,
        requester("alice@example.org/phone").submit(
            "register-device",
            &[
                ("provider", "webpush"),
                ("device-token", &endpoint.url("a")),
            ],
        ),
    )
    .await;
    let node = common::form_values(common::result_of(&registered).unwrap(), "node")
        .pop()
        .unwrap();
    let reply = ask(
        &gw,
        requester(SERVER).publish_with(Some(&node), &[], &[("last-message-body", "hi")]),
    )
    .await;
    assert!(is_result(&reply), "{reply:?}");
    assert_eq!(endpoint.received(), 1);
    assert_eq!(production.requests().len(), 1, "not a token");
}
