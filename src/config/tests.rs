//! The configuration: what loads, and that every bad value is refused with its key.

use super::*;

const MINIMAL: &str = "[component]\njid = \"push.example.org\"\nsecret = \"s\"\n";

#[test]
fn shipped_example_is_valid() {
    let text = include_str!("../../etc/pushgate.toml");
    let c = Config::from_toml_str(text).unwrap();
    assert_eq!(c.component.jid, "push.localhost");
    assert!(c.providers.contains_key("webpush"));
}

#[test]
fn defaults_fill_in() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.component.server, "127.0.0.1:5347");
    assert_eq!(c.registration.max_payload_size, 3000);
    assert_eq!(c.publish_timeout(), Duration::from_secs(10));
}

#[test]
fn unknown_keys_are_named() {
    let e = Config::from_toml_str(&format!("{MINIMAL}colour = \"red\"\n")).unwrap_err();
    assert!(e.to_string().contains("colour"), "{e}");
    let e = Config::from_toml_str("[component]\njid=\"p.x\"\nsecret=\"s\"\nsecert=\"t\"\n")
        .unwrap_err();
    assert!(e.to_string().contains("secert"), "{e}");
}

#[test]
fn bad_values_are_named() {
    let e =
        Config::from_toml_str("[component]\njid=\"p.x\"\nsecret=\"s\"\nidle_ping_secs=\"soon\"\n")
            .unwrap_err();
    assert!(e.to_string().contains("idle_ping_secs"), "{e}");
    let e = Config::from_toml_str("[component]\njid=\"user@p.x\"\nsecret=\"s\"\n").unwrap_err();
    assert!(e.to_string().contains("component.jid"), "{e}");
    let e = Config::from_toml_str("[component]\njid=\"p.x\"\nsecret=\"s\"\nserver=\"nowhere\"\n")
        .unwrap_err();
    assert!(e.to_string().contains("component.server"), "{e}");
    let e =
        Config::from_toml_str("[component]\njid=\"p.x\"\nsecret=\"s\"\npublish_timeout_secs=40\n")
            .unwrap_err();
    assert!(e.to_string().contains("publish_timeout_secs"), "{e}");
    let e = Config::from_toml_str("[component]\njid=\"p.x\"\n").unwrap_err();
    assert!(e.to_string().contains("secret"), "{e}");
}

#[test]
fn admins_must_be_user_jids() {
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}[admin]\njids = [\"root@example.org\"]\n"
    ))
    .unwrap();
    assert_eq!(c.admins().len(), 1);
    assert_eq!(c.admin.cert_expiry_warning_days, 30);
    let e = Config::from_toml_str(&format!("{MINIMAL}[admin]\njids = [\"example.org\"]\n"))
        .unwrap_err();
    assert!(e.to_string().contains("admin.jids[0]"), "{e}");
}

#[test]
fn bad_values_inside_provider_sections_name_the_key() {
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}[providers.\"tigase:messenger:apns:1\"]\nkind = \"apns\"\ntopic = \"a.b\"\nenvironment = \"staging\"\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("providers.tigase:messenger:apns:1.environment"),
        "{e}"
    );
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}[providers.up]\nkind = \"webpush\"\nttl_secs = \"long\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("providers.up.ttl_secs"), "{e}");
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}[providers.up]\nkind = \"webpush\"\nttl = 3\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("providers.up") && e.to_string().contains("ttl"),
        "{e}"
    );
    let e = Config::from_toml_str(&format!("{MINIMAL}[providers.up]\nttl_secs = 3\n")).unwrap_err();
    assert!(e.to_string().contains("providers.up.kind"), "{e}");
}

#[test]
fn http_section_defaults_and_errors_name_the_key() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.http.listen, None);
    assert_eq!(c.http.max_body_bytes, 4096);
    assert_eq!(c.http.rate_limit_per_minute, 60);
    assert!(!c.http.trust_forwarded_for);
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}[http]\nlisten = \"[::1]:5281\"\ntrust_forwarded_for = true\n"
    ))
    .unwrap();
    assert_eq!(c.http.listen_addr().unwrap().port(), 5281);
    assert!(c.http.trust_forwarded_for);
    let e =
        Config::from_toml_str(&format!("{MINIMAL}[http]\nlisten = \"localhost\"\n")).unwrap_err();
    assert!(e.to_string().contains("http.listen"), "{e}");
    let e = Config::from_toml_str(&format!("{MINIMAL}[http]\nrate_limit_per_minute = 0\n"))
        .unwrap_err();
    assert!(e.to_string().contains("http.rate_limit_per_minute"), "{e}");
    let e = Config::from_toml_str(&format!("{MINIMAL}[http]\nmax_body_bytes = 1\n")).unwrap_err();
    assert!(e.to_string().contains("http.max_body_bytes"), "{e}");
    let e = Config::from_toml_str(&format!("{MINIMAL}[http]\nlisten_on = \"x\"\n")).unwrap_err();
    assert!(e.to_string().contains("listen_on"), "{e}");
}

/// Every numeric key, fed values just outside its range and i64::MAX (the largest TOML
/// integer: `cache_ttl_secs = 9223372036854775807` once passed and made every publish
/// panic), is refused with an error naming it. Lower bounds of 0 get -1.
#[test]
fn every_number_has_a_range_and_the_error_names_the_key() {
    let cases: &[(&str, &str, &[i64])] = &[
        ("component", "max_reconnect_delay_secs", &[0, 3601]),
        ("component", "idle_ping_secs", &[4, 3601]),
        ("component", "publish_timeout_secs", &[0, 31]),
        ("storage", "cache_capacity", &[-1, 10_000_001]),
        ("storage", "cache_max_bytes", &[-1, (1 << 30) + 1]),
        ("storage", "cache_ttl_secs", &[-1, 3601]),
        ("registration", "max_payload_size", &[255, 4097]),
        ("registration", "low_priority_interval_secs", &[-1, 3601]),
        ("admin", "cert_expiry_warning_days", &[0, 366]),
        ("admin", "cert_check_interval_secs", &[0, 86_401]),
        ("http", "max_body_bytes", &[63, 1_048_577]),
        ("http", "rate_limit_per_minute", &[0, 60_001]),
        ("registration", "max_per_account", &[0, 10_001]),
        (
            "registration",
            "rate_per_domain_per_minute",
            &[-1, 1_000_001],
        ),
        ("limits", "max_stanza_bytes", &[4095, 16 * 1024 * 1024 + 1]),
        ("limits", "max_depth", &[7, 257]),
        ("limits", "max_name_bytes", &[31, 1025]),
        ("limits", "max_attribute_bytes", &[3071, 8001]),
        ("limits", "max_attributes", &[3, 257]),
        ("limits", "max_elements", &[15, 65_537]),
        ("limits", "max_in_flight", &[15, 65_537]),
        ("limits", "max_in_flight_bytes", &[1_048_575, 4_294_967_297]),
        ("limits", "provider_concurrency", &[0, 10_001]),
        ("limits", "provider_queue", &[-1, 100_001]),
        ("limits", "host_concurrency", &[0, 1001]),
        ("limits", "host_queue", &[-1, 100_001]),
        ("limits", "shutdown_timeout_secs", &[0, 301]),
        ("http", "header_timeout_secs", &[0, 301]),
        ("http", "body_timeout_secs", &[0, 301]),
        ("http", "idle_timeout_secs", &[0, 3601]),
        ("http", "max_connections", &[7, 65_537]),
    ];
    for (section, key, bad) in cases {
        for value in bad.iter().chain([&i64::MAX]) {
            let text = if *section == "component" {
                format!("{MINIMAL}{key} = {value}\n")
            } else {
                format!("{MINIMAL}[{section}]\n{key} = {value}\n")
            };
            let e = Config::from_toml_str(&text).unwrap_err();
            assert!(
                e.to_string().starts_with(&format!("{section}.{key}:")),
                "{section}.{key} = {value}: {e}"
            );
        }
    }
}

/// The same for every numeric key of every provider kind, as `providers.<id>.<key>`; files
/// are not read for it, so the paths need not exist.
#[test]
fn every_provider_number_has_a_range_and_the_error_names_the_key() {
    /// Each key with its out-of-range values.
    type Keys = &'static [(&'static str, &'static [i64])];
    let kinds: &[(&str, &str, Keys)] = &[
        (
            "webpush",
            "",
            &[
                ("ttl_secs", &[2_419_201]),
                ("max_body_chars", &[0, 4097]),
                ("request_timeout_secs", &[0, 61]),
            ],
        ),
        (
            "apns",
            "topic = \"a.b\"\nenvironment = \"sandbox\"\n",
            &[
                ("pool_size", &[0, 65]),
                ("ping_interval_secs", &[3601]),
                ("request_timeout_secs", &[0, 61]),
                ("expiration_secs", &[2_419_201]),
                ("voip_expiration_secs", &[3601]),
                ("max_body_chars", &[0, 4097]),
            ],
        ),
        (
            "fcm",
            "service_account_file = \"/nonexistent/sa.json\"\n",
            &[
                ("ttl_secs", &[2_419_201]),
                ("max_body_chars", &[0, 4097]),
                ("request_timeout_secs", &[0, 61]),
            ],
        ),
        #[cfg(feature = "fcm-xmpp")]
        (
            "fcm-xmpp",
            "sender_id = \"1\"\nserver_key = \"k\"\n",
            &[
                ("pool_size", &[0, 17]),
                ("ttl_secs", &[2_419_201]),
                ("max_body_chars", &[0, 4097]),
                ("request_timeout_secs", &[0, 61]),
            ],
        ),
    ];
    for (kind, required, keys) in kinds {
        let section = format!("{MINIMAL}[providers.p]\nkind = \"{kind}\"\n{required}");
        Config::from_toml_str(&section).unwrap_or_else(|e| panic!("{kind} with defaults: {e}"));
        for (key, bad) in *keys {
            for value in bad.iter().chain([&i64::MAX]) {
                let e = Config::from_toml_str(&format!("{section}{key} = {value}\n")).unwrap_err();
                assert!(
                    e.to_string().starts_with(&format!("providers.p.{key}:")),
                    "{kind} {key} = {value}: {e}"
                );
            }
        }
    }
}

#[cfg(not(feature = "fcm-xmpp"))]
#[test]
fn fcm_xmpp_needs_its_feature() {
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}[providers.ccs]\nkind = \"fcm-xmpp\"\nsender_id = \"1\"\nserver_key = \"k\"\n"
    ))
    .unwrap_err()
    .to_string();
    assert!(e.starts_with("providers.ccs.kind: "), "{e}");
    assert!(e.contains("`fcm-xmpp` feature"), "{e}");
}

#[test]
fn the_in_flight_budget_holds_at_least_one_stanza() {
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}[limits]\nmax_stanza_bytes = 4194304\nmax_in_flight_bytes = 2097152\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string().starts_with("limits.max_in_flight_bytes:"),
        "{e}"
    );
}

#[test]
fn limits_have_defaults() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.limits.max_stanza_bytes, 256 * 1024);
    assert_eq!(c.limits.stanza_limits().max_depth, 64);
    assert_eq!(c.limits.max_in_flight, 4096);
    let e = Config::from_toml_str(&format!("{MINIMAL}[limits]\nmax_depht = 3\n")).unwrap_err();
    assert!(e.to_string().contains("max_depht"), "{e}");
}

#[test]
fn registration_limits_default_and_errors_name_the_key() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(c.registration.max_per_account, 20);
    assert_eq!(c.registration.rate_per_domain_per_minute, 600);
    assert!(c.registration.allow_domains.is_empty() && c.registration.deny_domains.is_empty());
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}[registration]\nrate_per_domain_per_minute = 0\n\
         allow_domains = [\"example.org\", \"*.example.net\"]\n"
    ))
    .unwrap();
    assert_eq!(c.registration.rate_per_domain_per_minute, 0);
    assert_eq!(
        RegistrationConfig::domain_patterns(&c.registration.allow_domains).len(),
        2
    );
    for (toml, key) in [
        ("max_per_account = 0", "registration.max_per_account"),
        ("max_per_account = 10001", "registration.max_per_account"),
        (
            "rate_per_domain_per_minute = 1000001",
            "registration.rate_per_domain_per_minute",
        ),
        (
            "allow_domains = [\"a.*.org\"]",
            "registration.allow_domains[0]",
        ),
        (
            "deny_domains = [\"ok.org\", \"bad domain\"]",
            "registration.deny_domains[1]",
        ),
        (
            "background_without_summary = [\"*\"]",
            "registration.background_without_summary[0]",
        ),
    ] {
        let e = Config::from_toml_str(&format!("{MINIMAL}[registration]\n{toml}\n")).unwrap_err();
        assert!(e.to_string().contains(key), "{toml}: {e}");
    }
    let long_id = "p".repeat(300);
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}[providers.{long_id}]\nkind = \"webpush\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("at most 256 bytes"), "{e}");
}

#[test]
fn unknown_provider_kind_is_named() {
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}[providers.x]\nkind = \"carrier-pigeon\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("providers.x"), "{e}");
}

#[test]
fn when_replaced_is_standby_or_exit() {
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert_eq!(
        c.component.when_replaced,
        crate::config::WhenReplaced::Standby
    );
    let c = Config::from_toml_str(
        &MINIMAL.replace("[component]\n", "[component]\nwhen_replaced = \"exit\"\n"),
    )
    .unwrap();
    assert_eq!(c.component.when_replaced, crate::config::WhenReplaced::Exit);
    let e = Config::from_toml_str(
        &MINIMAL.replace("[component]\n", "[component]\nwhen_replaced = \"sleep\"\n"),
    )
    .unwrap_err();
    assert!(e.to_string().contains("component.when_replaced"), "{e}");
}

#[test]
fn matrix_apps_name_configured_providers() {
    let webpush = "[providers.up]\nkind = \"webpush\"\n";
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}{webpush}[matrix.apps.\"im.example.*\"]\nprovider = \"up\"\npushkey = \"base64\"\n"
    ))
    .unwrap();
    let app = &c.matrix.apps["im.example.*"];
    assert_eq!(app.pushkey, PushkeyEncoding::Base64);
    assert!(app.send_badge_counts);
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}{webpush}[matrix.apps.\"im.example.ios\"]\nprovider = \"apns\"\n"
    ))
    .unwrap_err();
    assert!(
        e.to_string()
            .contains("matrix.apps.im.example.ios.provider"),
        "{e}"
    );
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}{webpush}[matrix.apps.\"x\"]\nprovider = \"up\"\npushkey = \"hex\"\n"
    ))
    .unwrap_err();
    assert!(e.to_string().contains("pushkey"), "{e}");
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}{webpush}[matrix.apps.\"x\"]\nprovider = \"up\"\n\
         call_tweaks = {{ sound = \"ring\" }}\ndefault_payload = {{ aps = {{ \"mutable-content\" = 1 }} }}\n"
    ))
    .unwrap();
    let app = &c.matrix.apps["x"];
    assert_eq!(app.call_tweaks["sound"], "ring");
    assert_eq!(app.default_payload["aps"]["mutable-content"], 1);
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}{webpush}[matrix.apps.\"x\"]\nprovider = \"up\"\ndefault_payload = {{ pad = \"{}\" }}\n",
        "x".repeat(3000)
    ))
    .unwrap_err();
    assert!(
        e.to_string().contains("matrix.apps.x.default_payload"),
        "{e}"
    );
}

#[test]
fn unifiedpush_needs_a_public_url_and_the_http_listener() {
    let http = "[http]\nlisten = \"127.0.0.1:8080\"\n";
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}{http}[unifiedpush]\nenabled = true\nendpoint_base_url = \"https://up.example.org\"\n"
    ))
    .unwrap();
    assert_eq!(c.unifiedpush.base_url(), "https://up.example.org");
    assert_eq!(c.unifiedpush.expiration_days, 30);
    for (text, key) in [
        (
            format!("{http}[unifiedpush]\nenabled = true\n"),
            "unifiedpush.endpoint_base_url",
        ),
        (
            format!(
                "{http}[unifiedpush]\nenabled = true\nendpoint_base_url = \"up.example.org\"\n"
            ),
            "unifiedpush.endpoint_base_url",
        ),
        (
            "[unifiedpush]\nenabled = true\nendpoint_base_url = \"https://up.example.org\"\n"
                .to_owned(),
            "unifiedpush.enabled",
        ),
        (
            format!("{http}[unifiedpush]\nanswer_timeout_secs = 0\n"),
            "unifiedpush.answer_timeout_secs",
        ),
        (
            format!("{http}[unifiedpush]\npushes_per_minute_per_ip = 0\n"),
            "unifiedpush.pushes_per_minute_per_ip",
        ),
    ] {
        let e = Config::from_toml_str(&format!("{MINIMAL}{text}")).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
}

#[test]
fn sip_apps_name_providers_of_their_platform_and_networks_parse() {
    let providers = "[http]\nlisten = \"127.0.0.1:8080\"\n\
        [providers.apns]\nkind = \"apns\"\ntopic = \"com.example.phone\"\nenvironment = \"production\"\n\
        [providers.fcm]\nkind = \"fcm\"\nservice_account_file = \"/etc/pushgate/sa.json\"\n\
        [providers.up]\nkind = \"webpush\"\n";
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}{providers}[sip]\nallowed_networks = [\"10.0.0.0/8\", \"2001:db8::1\"]\n\
         [sip.apps.\"com.example.phone\".apple]\ntype = \"sylk\"\nprovider = \"apns\"\n\
         [sip.apps.\"com.example.phone\".firebase]\ntype = \"linphone\"\nprovider = \"fcm\"\n\
         wait_for_delivery = false\nlog_remote_urls = [\"https://audit.example.org/push\"]\n"
    ))
    .unwrap();
    assert!(c.sip.allows("10.9.8.7".parse().unwrap()));
    assert!(c.sip.allows("2001:db8::1".parse().unwrap()));
    assert!(!c.sip.allows("127.0.0.1".parse().unwrap()));
    let app = &c.sip.apps["com.example.phone"];
    assert_eq!(app.apple.as_ref().unwrap().call_ttl_secs, 30);
    assert!(!app.firebase.as_ref().unwrap().wait_for_delivery);
    let c = Config::from_toml_str(MINIMAL).unwrap();
    assert!(c.sip.allows("127.0.0.1".parse().unwrap()));
    assert!(c.sip.allows("::1".parse().unwrap()));
    assert!(!c.sip.allows("192.0.2.1".parse().unwrap()));

    let app = |platform: &str, body: &str| {
        format!("[sip.apps.\"com.example.phone\".{platform}]\ntype = \"sylk\"\n{body}")
    };
    for (text, key) in [
        (
            app("apple", "provider = \"fcm\"\n"),
            "sip.apps.com.example.phone.apple.provider",
        ),
        (
            app("firebase", "provider = \"up\"\n"),
            "sip.apps.com.example.phone.firebase.provider",
        ),
        (
            app("apple", "provider = \"nope\"\n"),
            "sip.apps.com.example.phone.apple.provider",
        ),
        (
            app("apple", "provider = \"apns\"\nmax_concurrent = 0\n"),
            "sip.apps.com.example.phone.apple.max_concurrent",
        ),
        (
            app("apple", "provider = \"apns\"\ncall_ttl_secs = 0\n"),
            "sip.apps.com.example.phone.apple.call_ttl_secs",
        ),
        (
            app(
                "apple",
                "provider = \"apns\"\nlog_remote_urls = [\"ftp://x\"]\n",
            ),
            "sip.apps.com.example.phone.apple.log_remote_urls",
        ),
        (
            app("apple", "provider = \"apns\"\ntype = \"asterisk\"\n"),
            "type",
        ),
        (app("blackberry", "provider = \"apns\"\n"), "blackberry"),
        (
            "[sip]\nallowed_networks = [\"10.0.0.0/33\"]\n".to_owned(),
            "sip.allowed_networks",
        ),
        (
            "[sip]\nmax_devices_per_account = 0\n".to_owned(),
            "sip.max_devices_per_account",
        ),
    ] {
        let e = Config::from_toml_str(&format!("{MINIMAL}{providers}{text}")).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
    // Without the HTTP listener nobody could call it.
    let e = Config::from_toml_str(&format!(
        "{MINIMAL}{}{}",
        providers.replace("[http]\nlisten = \"127.0.0.1:8080\"\n", ""),
        app("apple", "provider = \"apns\"\n")
    ))
    .unwrap_err();
    assert!(e.to_string().contains("sip.apps"), "{e}");
}

#[test]
fn fpush_modules_name_apns_or_fcm_providers() {
    let providers = "[providers.apns]\nkind = \"apns\"\ntopic = \"im.monal.Monal\"\nenvironment = \"production\"\n\
        [providers.up]\nkind = \"webpush\"\n";
    let c = Config::from_toml_str(&format!(
        "{MINIMAL}{providers}[fpush.modules.monalProdiOS]\nprovider = \"apns\"\ndefault = true\n"
    ))
    .unwrap();
    assert_eq!(c.fpush.pushes_per_minute_per_token, 30);
    assert!(c.fpush.modules["monalProdiOS"].default);
    for (text, key) in [
        (
            "[fpush.modules.m]\nprovider = \"up\"\n",
            "fpush.modules.m.provider",
        ),
        (
            "[fpush.modules.m]\nprovider = \"nope\"\n",
            "fpush.modules.m.provider",
        ),
        (
            "[fpush.modules.m]\nprovider = \"apns\"\nsandbox_provider = \"nope\"\n",
            "fpush.modules.m.sandbox_provider",
        ),
        (
            "[fpush.modules.\"m-sandbox\"]\nprovider = \"apns\"\n",
            "fpush.modules.m-sandbox",
        ),
        (
            "[fpush.modules.a]\nprovider = \"apns\"\ndefault = true\n[fpush.modules.b]\nprovider = \"apns\"\ndefault = true\n",
            "fpush.modules",
        ),
        (
            "[fpush]\npushes_per_minute_per_token = 0\n",
            "fpush.pushes_per_minute_per_token",
        ),
        (
            "[fpush]\nallowed_domains = [\"*\"]\n",
            "fpush.allowed_domains[0]",
        ),
    ] {
        let e = Config::from_toml_str(&format!("{MINIMAL}{providers}{text}")).unwrap_err();
        assert!(e.to_string().contains(key), "{key}: {e}");
    }
}
