//! What the provider tests share besides the servers: the documented configuration file and
//! its commented examples, a typical device and message, files in a test directory, the
//! `openssl` CLI for RSA keys (ring cannot generate them), and verdict assertions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use pushgate_providers::{Content, Device, DeviceToken, ProviderId, Verdict};

use crate::SupportError;

/// etc/pushgate.toml, the documented configuration file.
pub fn shipped_config() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../etc/pushgate.toml"
    ))
    .unwrap()
}

/// The commented example that follows the line `marker` in etc/pushgate.toml, uncommented: up
/// to the next blank line (another provider's example may follow), without the nested comments
/// (`# # …`).
pub fn shipped_example(marker: &str) -> String {
    let text = shipped_config();
    let (_, example) = text
        .split_once(marker)
        .unwrap_or_else(|| panic!("{marker} is in etc/pushgate.toml"));
    let example = example.split("\n\n").next().unwrap_or(example);
    example
        .lines()
        .filter(|l| l.starts_with("# ") && !l.starts_with("# # "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect()
}

/// `section` names each of `keys` and nothing else.
pub fn assert_documents_exactly(section: &toml::Table, keys: &[&str]) {
    for key in keys {
        assert!(section.contains_key(*key), "{key} is not documented");
    }
    assert_eq!(
        section.len(),
        keys.len(),
        "a key is documented that the section does not know"
    );
}

/// A device of `provider` with one token and no WebPush keys.
pub fn device(provider: &str, token: &str) -> Device {
    Device {
        provider: ProviderId::new(provider),
        token: DeviceToken::new(token),
        second_token: None,
        webpush_keys: None,
    }
}

/// An FCM-looking registration token: `id`, then the usual `:APA91b` form padded with
/// `filler` characters.
pub fn fcm_token(id: &str, filler: usize) -> String {
    format!("{id}Xk3-vQ:APA91bH_{}", "x".repeat(filler))
}

/// A message from Romeo to Juliet with every field a summary carries but the channel.
pub fn content() -> Content {
    Content {
        account: Some("juliet@capulet.example".into()),
        sender: Some("romeo@montague.example/phone".into()),
        body: Some("wherefore art thou".into()),
        message_count: Some(3),
        nickname: Some("Romeo".into()),
        channel: None,
    }
}

/// Writes `data` to `dir/name`.
pub fn write(dir: &Path, name: &str, data: impl AsRef<[u8]>) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, data).unwrap();
    path
}

/// An RSA key (FCM service accounts sign with RS256).
pub struct RsaKey {
    /// PKCS#8 PEM, as a service-account JSON carries it.
    pub pem: String,
    /// PKCS#1 RSAPublicKey DER, as ring verifies with it.
    pub public_der: Vec<u8>,
}

impl RsaKey {
    /// A fresh 2048-bit key from `openssl genpkey`, its public half from `openssl rsa`.
    pub fn generate() -> Result<Self, SupportError> {
        let dir = tempfile::TempDir::new()?;
        let key = dir.path().join("key.pem");
        let key_s = key.to_str().ok_or(SupportError::NonUtf8Path)?;
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            key_s,
        ])?;
        let public_der = openssl(&["rsa", "-in", key_s, "-RSAPublicKey_out", "-outform", "DER"])?;
        let pem = std::fs::read_to_string(&key)?;
        if !pem.contains("BEGIN PRIVATE KEY") {
            return Err(SupportError::Openssl {
                args: "genpkey".into(),
                detail: "no PKCS#8 key".into(),
            });
        }
        Ok(Self { pem, public_der })
    }
}

/// What `openssl <args>` prints on stdout.
pub fn openssl(args: &[&str]) -> Result<Vec<u8>, SupportError> {
    let failed = |detail: String| SupportError::Openssl {
        args: args.join(" "),
        detail,
    };
    let out = Command::new("openssl")
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            failed(format!(
                "the openssl CLI is needed (scripts/lib.sh installs it): {e}"
            ))
        })?;
    if !out.status.success() {
        return Err(failed(
            String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        ));
    }
    Ok(out.stdout)
}

/// `v` is a send the provider held back itself (after a service asked it to slow down), for at
/// most `max`; returns its reason.
pub fn assert_held_back(v: &Verdict, max: Duration) -> &str {
    match v {
        Verdict::Transient {
            retry_after: Some(left),
            reason,
        } => {
            assert!(*left <= max, "{left:?}");
            assert!(reason.contains("holding back"), "{reason}");
            reason
        }
        other => panic!("expected a held-back transient, got {other:?}"),
    }
}
