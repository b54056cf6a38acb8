//! A real `Component` for a test, configured from TOML text as `pushgate.toml` would configure it,
//! with its store on a throw-away SQLite file or PostgreSQL database.

use std::ops::Deref;
use std::sync::Arc;

use super::{Component, Config, Outbox, Store, with_fresh_postgres};

/// The `[component]` section most tests share: `push.test`, secret `s`.
pub const COMPONENT: &str = "[component]\njid = \"push.test\"\nsecret = \"s\"\n";

/// A gateway, its outbox and configuration, and the database it runs on.
pub struct TestGateway {
    pub gw: Arc<Component>,
    pub config: Config,
    /// The store's URL, for another instance on the same database.
    pub url: String,
    toml: String,
    outbox: Option<Outbox>,
    /// Holds the SQLite file; shared with other instances on it.
    dir: Option<Arc<tempfile::TempDir>>,
}

impl Deref for TestGateway {
    type Target = Component;

    fn deref(&self) -> &Component {
        &self.gw
    }
}

impl TestGateway {
    /// On a fresh SQLite file in a temporary directory of its own.
    pub async fn sqlite(toml: &str) -> TestGateway {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = Store::sqlite_url_in(dir.path()).expect("SQLite URL");
        TestGateway {
            dir: Some(Arc::new(dir)),
            ..TestGateway::at(&url, toml).await
        }
    }

    /// On the database at `url`, which the caller keeps.
    pub async fn at(url: &str, toml: &str) -> TestGateway {
        // Providers build their TLS clients on the process-wide provider.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let config =
            Config::from_toml_str(toml).unwrap_or_else(|e| panic!("bad test config: {e}\n{toml}"));
        let store = Store::open(url)
            .await
            .unwrap_or_else(|e| panic!("cannot open {url}: {e}"));
        let (gw, outbox) =
            Component::new(&config, store).unwrap_or_else(|e| panic!("cannot build gateway: {e}"));
        gw.core
            .load_unifiedpush(&config.unifiedpush)
            .await
            .unwrap_or_else(|e| panic!("cannot load the UnifiedPush key: {e}"));
        TestGateway {
            gw,
            config,
            url: url.to_owned(),
            toml: toml.to_owned(),
            outbox: Some(outbox),
            dir: None,
        }
    }

    /// A second instance with the same configuration on the same database, as a second pushgate
    /// process sharing PostgreSQL would be.
    pub async fn another(&self) -> TestGateway {
        TestGateway {
            dir: self.dir.clone(),
            ..TestGateway::at(&self.url, &self.toml).await
        }
    }

    /// The outbox, for a stream that drains it; once.
    pub fn take_outbox(&mut self) -> Outbox {
        self.outbox.take().expect("the outbox was taken already")
    }
}

/// Runs `scenario` with a gateway configured by `toml` on a fresh PostgreSQL database named
/// `<prefix>_<random>`, dropped afterwards.
pub async fn on_postgres_gateway<F, Fut>(prefix: &str, toml: &str, scenario: F)
where
    F: FnOnce(TestGateway) -> Fut,
    Fut: Future<Output = ()>,
{
    with_fresh_postgres(prefix, |url| async move {
        scenario(TestGateway::at(&url, toml).await).await
    })
    .await;
}
