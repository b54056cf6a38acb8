//! Local provider endpoints speaking the real wire protocols, with the `[providers.*]`
//! section that points pushgate at each: an HTTP/2 APNs on TLS with a test CA, and FCM v1 with its
//! OAuth token endpoint. The temporary directory each returns holds the CA, key and account files.

use serde_json::json;

/// A local HTTP/2 APNs and the `[providers.apns]` section for it; the temporary directory
/// holds the CA and key files.
pub async fn apns_sink(
    topic: &str,
) -> (
    pushgate_test_support::apns::MockApns,
    tempfile::TempDir,
    String,
) {
    use pushgate_test_support::apns::{MockApns, Options};
    use pushgate_test_support::pki::Pki;

    let pki = Pki::new();
    let apns = MockApns::start(&pki, Options::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let key = dir.path().join("AuthKey.p8");
    std::fs::write(&key, rcgen::KeyPair::generate().unwrap().serialize_pem()).unwrap();
    let section = format!(
        "[providers.apns]\nkind = \"apns\"\ntopic = \"{topic}\"\n\
         environment = \"production\"\nbase_url = \"{}\"\nca_file = \"{}\"\nkey_file = \"{}\"\n\
         key_id = \"KEY1234567\"\nteam_id = \"TEAM765432\"\n",
        apns.base_url(),
        ca.display(),
        key.display()
    );
    (apns, dir, section)
}

/// A local FCM v1 with its OAuth token endpoint, and the `[providers.fcm]` section for it
/// (with `options` added).
pub async fn fcm_sink(
    options: &str,
) -> (
    pushgate_test_support::fcm::MockFcm,
    tempfile::TempDir,
    String,
) {
    use pushgate_test_support::fcm::{AssertionCheck, MockFcm};
    use pushgate_test_support::fixtures::RsaKey;
    use pushgate_test_support::pki::Pki;

    const PROJECT: &str = "pushgate-test-1234";
    const EMAIL: &str = "pushgate@pushgate-test-1234.iam.gserviceaccount.com";
    let key = RsaKey::generate().unwrap();
    let pki = Pki::new();
    let fcm = MockFcm::start(
        &pki,
        PROJECT,
        AssertionCheck {
            public_key_der: key.public_der.clone(),
            kid: "k1".to_owned(),
            iss: EMAIL.to_owned(),
        },
    )
    .await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &pki.ca_pem).unwrap();
    let sa = dir.path().join("service-account.json");
    let account = json!({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "k1",
        "private_key": key.pem, "client_email": EMAIL, "token_uri": fcm.token_uri(),
    });
    std::fs::write(&sa, account.to_string()).unwrap();
    let section = format!(
        "[providers.fcm]\nkind = \"fcm\"\nservice_account_file = \"{}\"\nbase_url = \"{}\"\n\
         ca_file = \"{}\"\n{options}",
        sa.display(),
        fcm.base_url(),
        ca.display()
    );
    (fcm, dir, section)
}
