//! Admin side of APNs: `set-apns-certificate`, credential sync between instances, expiry watch.
//!
//! Two gateways share one SQLite database, as two pushgate instances would share PostgreSQL. The
//! command goes through pushgate's real router; the certificates are real X.509 made with rcgen.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use chrono::{Datelike, Utc};
use common::{TestGateway, ask, error_of, requester, result_of};
use pushgate::core::apns_credential_sync as credentials;
use pushgate::fronts::xmpp::Component;
use pushgate::fronts::xmpp::admin_alerts;
use pushgate::metrics;
use rcgen::{CertificateParams, KeyPair};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::stanza::Stanza;
use xmpp_parsers::stanza_error::DefinedCondition;

const CONFIG: &str = "[component]\njid = \"push.test\"\nsecret = \"s\"\n\
    [admin]\njids = [\"admin@example.org\"]\ncert_expiry_warning_days = 30\n\
    [providers.apns-cert]\nkind = \"apns\"\ntopic = \"org.example.app\"\nenvironment = \"sandbox\"\n\
    base_url = \"https://127.0.0.1:9\"\n";

const SET_CERTIFICATE: &str = "set-apns-certificate";
const ADMIN: &str = "admin@example.org/x";
const NS_COMMANDS: &str = "http://jabber.org/protocol/commands";

/// A certificate valid from yesterday until `days` from now (negative: already expired).
fn certificate(days: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(vec!["Apple Push Services: org.example.app".into()]).unwrap();
    let ymd =
        |d: chrono::DateTime<Utc>| rcgen::date_time_ymd(d.year(), d.month() as u8, d.day() as u8);
    params.not_before = ymd(Utc::now() - chrono::Duration::days(days.abs() + 2));
    params.not_after = ymd(Utc::now() + chrono::Duration::days(days));
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The `set-apns-certificate` form for `provider`.
fn upload<'a>(provider: &'a str, cert: &'a str, key: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![
        ("provider", provider),
        ("certificate", cert),
        ("private-key", key),
    ]
}

async fn condition(gw: &Component, from: &str, fields: &[(&str, &str)]) -> DefinedCondition {
    error_of(&ask(gw, requester(from).submit(SET_CERTIFICATE, fields)).await).1
}

fn result_text(iq: &Iq) -> String {
    String::from(result_of(iq).expect("a result with a payload"))
}

#[tokio::test]
async fn upload_is_validated_stored_and_reaches_other_instances() {
    let a = TestGateway::sqlite(CONFIG).await;
    let b = a.another().await;
    let (cert, key) = certificate(10);
    let (expired_cert, expired_key) = certificate(-3);
    let (_, other_key) = certificate(10);

    // Only admins; refusals name the reason and store nothing.
    let refusals = [
        (
            "bob@example.org/phone",
            upload("apns-cert", &cert, &key),
            DefinedCondition::Forbidden,
        ),
        (
            ADMIN,
            upload("apns-cert", &expired_cert, &expired_key),
            DefinedCondition::NotAcceptable,
        ),
        (
            ADMIN,
            upload("apns-cert", &cert, &other_key),
            DefinedCondition::NotAcceptable,
        ),
        (
            ADMIN,
            vec![("provider", "apns-cert")],
            DefinedCondition::BadRequest,
        ),
        (
            ADMIN,
            upload("nope", &cert, &key),
            DefinedCondition::ItemNotFound,
        ),
    ];
    for (from, fields, want) in &refusals {
        assert_eq!(
            condition(&a, from, fields).await,
            *want,
            "{from} {fields:?}"
        );
    }
    assert!(
        credentials::apply_stored(&b.core, None)
            .await
            .unwrap()
            .is_none(),
        "a refused upload was stored"
    );

    // A good one: answered with what was stored, applied here at once.
    let reply = ask(
        &a,
        requester(ADMIN).submit(SET_CERTIFICATE, &upload("apns-cert", &cert, &key)),
    )
    .await;
    let text = result_text(&reply);
    assert!(
        text.contains("status='completed'") || text.contains("status=\"completed\""),
        "{text}"
    );
    assert!(
        text.contains("certificate") && text.contains("not-after"),
        "{text}"
    );
    let (_, apns_a) = a.core.providers.apns().next().unwrap();
    let info_a = apns_a
        .credential_info()
        .expect("applied on the instance that took the upload");

    // The other instance picks it up from the database.
    let (_, apns_b) = b.core.providers.apns().next().unwrap();
    assert!(apns_b.credential_info().is_none());
    let seen = credentials::apply_stored(&b.core, None).await.unwrap();
    assert!(seen.is_some());
    assert_eq!(apns_b.credential_info(), Some(info_a.clone()));
    // …and only once.
    assert!(credentials::apply_stored(&b.core, seen).await.unwrap() == seen);
}

#[tokio::test]
async fn expiring_certificate_warns_admins_once_a_day_and_sets_metrics() {
    let gw = TestGateway::sqlite(CONFIG).await;
    let (cert, key) = certificate(10);
    let reply = ask(
        &gw,
        requester(ADMIN).submit(SET_CERTIFICATE, &upload("apns-cert", &cert, &key)),
    )
    .await;
    result_text(&reply);

    let now = SystemTime::now();
    let mut warned = HashMap::new();
    let warnings = credentials::check_expiry(&gw.core, now, &mut warned);
    assert_eq!(warnings.len(), 1);
    let messages = admin_alerts::messages(&gw, &warnings[0]);
    assert_eq!(messages.len(), 1, "one message per admin");
    let Stanza::Message(m) = &messages[0] else {
        panic!()
    };
    assert_eq!(m.to.as_ref().unwrap().to_string(), "admin@example.org");
    assert_eq!(m.from.as_ref().unwrap().to_string(), "push.test");
    let body = m.bodies.values().next().unwrap();
    assert!(
        body.contains("apns-cert") && body.contains("expires"),
        "{body}"
    );

    assert!(
        credentials::check_expiry(&gw.core, now + Duration::from_secs(3600), &mut warned)
            .is_empty()
    );
    let later = credentials::check_expiry(
        &gw.core,
        now + Duration::from_secs(12 * 86_400),
        &mut warned,
    );
    assert_eq!(later.len(), 1, "expired: warned again after a day");
    let later = admin_alerts::messages(&gw, &later[0]);
    let Stanza::Message(m) = &later[0] else {
        panic!()
    };
    assert!(m.bodies.values().next().unwrap().contains("expired"));

    let text = metrics::render();
    assert!(
        text.contains("pushgate_apns_certificate_expiring{provider=\"apns-cert\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("pushgate_apns_certificate_expiry_timestamp_seconds{provider=\"apns-cert\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn the_command_is_listed_for_admins_only() {
    let gw = TestGateway::sqlite(CONFIG).await;
    let items = |from: &str| requester(from).disco_items(NS_COMMANDS);
    let admin = result_text(&ask(&gw, items(ADMIN)).await);
    let bob = result_text(&ask(&gw, items("bob@example.org/x")).await);
    assert!(admin.contains("set-apns-certificate"), "{admin}");
    assert!(!bob.contains("set-apns-certificate"), "{bob}");
    assert!(bob.contains("register-device"), "{bob}");
}

#[tokio::test]
async fn statistics_are_for_admins_and_carry_the_counters() {
    let gw = TestGateway::sqlite(CONFIG).await;
    let stats = |from: &str| requester(from).execute("get-statistics");
    assert_eq!(
        error_of(&ask(&gw, stats("bob@example.org/x")).await).1,
        DefinedCondition::Forbidden
    );

    // One refused publish, so at least one publish counter exists.
    let reply = ask(
        &gw,
        requester("example.org").publish(Some("nope"), None, &[]),
    )
    .await;
    assert_eq!(error_of(&reply).1, DefinedCondition::ItemNotFound);

    let text = result_text(&ask(&gw, stats(ADMIN)).await);
    assert!(text.contains("status='completed'"), "{text}");
    assert!(
        text.contains("pushgate_publishes_total{outcome=not_found}"),
        "{text}"
    );
    assert!(text.contains("pushgate_commands_total"), "{text}");
    let items = result_text(&ask(&gw, requester(ADMIN).disco_items(NS_COMMANDS)).await);
    assert!(items.contains("get-statistics"), "{items}");
}
