//! Admin side of APNs: `set-apns-certificate`, credential sync between instances, expiry watch.
//!
//! Two gateways share one SQLite database, as two pushgate instances would share PostgreSQL. The
//! command goes through pushgate's real router; the certificates are real X.509 made with rcgen.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{Datelike, Utc};
use pushgate::config::Config;
use pushgate::core::apns_credential_sync as credentials;
use pushgate::fronts::xmpp::Component;
use pushgate::fronts::xmpp::admin_alerts;
use pushgate::metrics;
use pushgate::storage::Store;
use rcgen::{CertificateParams, KeyPair};
use xmpp_parsers::iq::Iq;
use xmpp_parsers::minidom::Element;
use xmpp_parsers::stanza::Stanza;

const CONFIG: &str = "[component]\njid = \"push.test\"\nsecret = \"s\"\n\
    [admin]\njids = [\"admin@example.org\"]\ncert_expiry_warning_days = 30\n\
    [providers.apns-cert]\nkind = \"apns\"\ntopic = \"org.example.app\"\nenvironment = \"sandbox\"\n\
    base_url = \"https://127.0.0.1:9\"\n";

async fn gateway(dir: &std::path::Path) -> Arc<Component> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let config = Config::from_toml_str(CONFIG).unwrap();
    let store = Store::open(&Store::sqlite_url_in(dir).unwrap())
        .await
        .unwrap();
    Component::new(&config, store).unwrap().0
}

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

fn field(var: &str, value: &str) -> String {
    let values: String = value
        .lines()
        .map(|l| format!("<value>{l}</value>"))
        .collect();
    format!("<field var='{var}'>{values}</field>")
}

fn command(from: &str, fields: &[(&str, &str)]) -> Stanza {
    let form: String = fields.iter().map(|(k, v)| field(k, v)).collect();
    let xml = format!(
        "<iq xmlns='jabber:component:accept' type='set' id='c1' from='{from}' to='push.test'>\
           <command xmlns='http://jabber.org/protocol/commands' node='set-apns-certificate' action='execute'>\
             <x xmlns='jabber:x:data' type='submit'>{form}</x></command></iq>"
    );
    Iq::try_from(xml.parse::<Element>().unwrap())
        .unwrap()
        .into()
}

async fn run(gw: &Component, stanza: Stanza) -> Iq {
    let Some(Stanza::Iq(reply)) = common::route(gw, stanza).await else {
        panic!("no iq reply")
    };
    reply
}

fn error_condition(iq: &Iq) -> String {
    match iq {
        Iq::Error { error, .. } => format!("{:?}", error.defined_condition),
        other => panic!("expected an error, got {other:?}"),
    }
}

fn result_text(iq: &Iq) -> String {
    match iq {
        Iq::Result {
            payload: Some(p), ..
        } => String::from(p),
        other => panic!("expected a result, got {other:?}"),
    }
}

#[tokio::test]
async fn upload_is_validated_stored_and_reaches_other_instances() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (gateway(dir.path()).await, gateway(dir.path()).await);
    let (cert, key) = certificate(10);

    // Only admins.
    let reply = run(
        &a,
        command(
            "bob@example.org/phone",
            &[
                ("provider", "apns-cert"),
                ("certificate", &cert),
                ("private-key", &key),
            ],
        ),
    )
    .await;
    assert_eq!(error_condition(&reply), "Forbidden");

    // Refusals name the reason and store nothing.
    let (expired_cert, expired_key) = certificate(-3);
    let reply = run(
        &a,
        command(
            "admin@example.org/x",
            &[
                ("provider", "apns-cert"),
                ("certificate", &expired_cert),
                ("private-key", &expired_key),
            ],
        ),
    )
    .await;
    assert_eq!(error_condition(&reply), "NotAcceptable");
    let (_, other_key) = certificate(10);
    let reply = run(
        &a,
        command(
            "admin@example.org/x",
            &[
                ("provider", "apns-cert"),
                ("certificate", &cert),
                ("private-key", &other_key),
            ],
        ),
    )
    .await;
    assert_eq!(error_condition(&reply), "NotAcceptable");
    let reply = run(
        &a,
        command("admin@example.org/x", &[("provider", "apns-cert")]),
    )
    .await;
    assert_eq!(error_condition(&reply), "BadRequest");
    let reply = run(
        &a,
        command(
            "admin@example.org/x",
            &[
                ("provider", "nope"),
                ("certificate", &cert),
                ("private-key", &key),
            ],
        ),
    )
    .await;
    assert_eq!(error_condition(&reply), "ItemNotFound");
    assert!(
        credentials::apply_stored(&b.core, None)
            .await
            .unwrap()
            .is_none(),
        "a refused upload was stored"
    );

    // A good one: answered with what was stored, applied here at once.
    let reply = run(
        &a,
        command(
            "admin@example.org/x",
            &[
                ("provider", "apns-cert"),
                ("certificate", &cert),
                ("private-key", &key),
            ],
        ),
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
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path()).await;
    let (cert, key) = certificate(10);
    let reply = run(
        &gw,
        command(
            "admin@example.org/x",
            &[
                ("provider", "apns-cert"),
                ("certificate", &cert),
                ("private-key", &key),
            ],
        ),
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
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path()).await;
    let items = |from: &str| {
        let xml = format!(
            "<iq xmlns='jabber:component:accept' type='get' id='d' from='{from}' to='push.test'>\
               <query xmlns='http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/commands'/></iq>"
        );
        Stanza::from(Iq::try_from(xml.parse::<Element>().unwrap()).unwrap())
    };
    let admin = result_text(&run(&gw, items("admin@example.org/x")).await);
    let bob = result_text(&run(&gw, items("bob@example.org/x")).await);
    assert!(admin.contains("set-apns-certificate"), "{admin}");
    assert!(!bob.contains("set-apns-certificate"), "{bob}");
    assert!(bob.contains("register-device"), "{bob}");
}

#[tokio::test]
async fn statistics_are_for_admins_and_carry_the_counters() {
    let dir = tempfile::tempdir().unwrap();
    let gw = gateway(dir.path()).await;
    let stats = |from: &str| {
        let xml = format!(
            "<iq xmlns='jabber:component:accept' type='set' id='s' from='{from}' to='push.test'>\
               <command xmlns='http://jabber.org/protocol/commands' node='get-statistics' action='execute'/></iq>"
        );
        Stanza::from(Iq::try_from(xml.parse::<Element>().unwrap()).unwrap())
    };
    assert_eq!(
        error_condition(&run(&gw, stats("bob@example.org/x")).await),
        "Forbidden"
    );

    // One refused publish, so at least one publish counter exists.
    let publish = "<iq xmlns='jabber:component:accept' type='set' id='p' from='example.org' to='push.test'>\
        <pubsub xmlns='http://jabber.org/protocol/pubsub'><publish node='nope'/></pubsub></iq>";
    let reply = run(
        &gw,
        Stanza::from(Iq::try_from(publish.parse::<Element>().unwrap()).unwrap()),
    )
    .await;
    assert_eq!(error_condition(&reply), "ItemNotFound");

    let text = result_text(&run(&gw, stats("admin@example.org/x")).await);
    assert!(text.contains("status='completed'"), "{text}");
    assert!(
        text.contains("pushgate_publishes_total{outcome=not_found}"),
        "{text}"
    );
    assert!(text.contains("pushgate_commands_total"), "{text}");
    let items = result_text(&run(&gw, {
        let xml = "<iq xmlns='jabber:component:accept' type='get' id='d' from='admin@example.org/x' to='push.test'>\
            <query xmlns='http://jabber.org/protocol/disco#items' node='http://jabber.org/protocol/commands'/></iq>";
        Stanza::from(Iq::try_from(xml.parse::<Element>().unwrap()).unwrap())
    }).await);
    assert!(items.contains("get-statistics"), "{items}");
}
