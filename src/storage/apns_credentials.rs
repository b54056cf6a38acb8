//! Provider credentials uploaded at run time (APNs certificates and keys), persisted.
//!
//! An admin replaces an expiring certificate with a command on one instance; the row written here
//! is what every other instance sharing the database reads to pick it up without a restart.
//! Rows hold private keys: `Debug` of the model shows none of them, and nothing here logs them.

use std::fmt;

use chrono::{DateTime, Utc};
use pushgate_providers::ProviderId;
use pushgate_providers::apns::Credentials;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ActiveValue::Set, ColumnTrait, EntityTrait, QueryFilter};

use super::{Store, StoreError, now};

mod entity {
    use std::fmt;

    use sea_orm::entity::prelude::*;

    #[derive(Clone, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "provider_credentials")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false, column_type = "Text")]
        pub provider: String,
        #[sea_orm(column_type = "Text")]
        pub kind: String,
        #[sea_orm(column_type = "Text", nullable)]
        pub cert_pem: Option<String>,
        #[sea_orm(column_type = "Text")]
        pub key_pem: String,
        #[sea_orm(column_type = "Text", nullable)]
        pub key_id: Option<String>,
        #[sea_orm(column_type = "Text", nullable)]
        pub team_id: Option<String>,
        pub not_after: Option<DateTimeUtc>,
        pub updated_at: DateTimeUtc,
    }

    impl fmt::Debug for Model {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.debug_struct("ProviderCredentials")
                .field("provider", &self.provider)
                .field("kind", &self.kind)
                .field("updated_at", &self.updated_at)
                .finish_non_exhaustive()
        }
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

use entity::{ActiveModel, Column, Entity, Model};

const TOKEN: &str = "token";
const CERTIFICATE: &str = "certificate";

/// Credentials as stored, with when they were stored.
#[derive(Clone)]
pub struct StoredCredentials {
    pub provider: ProviderId,
    pub credentials: Credentials,
    pub not_after: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl fmt::Debug for StoredCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredCredentials")
            .field("provider", &self.provider)
            .field("not_after", &self.not_after)
            .field("updated_at", &self.updated_at)
            .finish_non_exhaustive()
    }
}

impl TryFrom<Model> for StoredCredentials {
    type Error = StoreError;

    fn try_from(m: Model) -> Result<Self, StoreError> {
        let corrupt = |field| StoreError::Corrupt { id: 0, field };
        let credentials = match m.kind.as_str() {
            TOKEN => Credentials::Token {
                key_pem: m.key_pem,
                key_id: m.key_id.ok_or(corrupt("key_id"))?,
                team_id: m.team_id.ok_or(corrupt("team_id"))?,
            },
            CERTIFICATE => Credentials::Certificate {
                cert_pem: m.cert_pem.ok_or(corrupt("cert_pem"))?,
                key_pem: m.key_pem,
            },
            _ => return Err(corrupt("kind")),
        };
        Ok(StoredCredentials {
            provider: ProviderId::new(m.provider),
            credentials,
            not_after: m.not_after,
            updated_at: m.updated_at,
        })
    }
}

impl Store {
    /// Stores (or replaces) the credentials of one provider; returns the time it recorded, which
    /// instances compare to notice the change.
    pub async fn save_credentials(
        &self,
        provider: &ProviderId,
        credentials: &Credentials,
        not_after: Option<DateTime<Utc>>,
    ) -> Result<DateTime<Utc>, StoreError> {
        let at = now();
        let (kind, cert_pem, key_pem, key_id, team_id) = match credentials {
            Credentials::Token {
                key_pem,
                key_id,
                team_id,
            } => (
                TOKEN,
                None,
                key_pem,
                Some(key_id.clone()),
                Some(team_id.clone()),
            ),
            Credentials::Certificate { cert_pem, key_pem } => {
                (CERTIFICATE, Some(cert_pem.clone()), key_pem, None, None)
            }
        };
        let row = ActiveModel {
            provider: Set(provider.as_str().to_owned()),
            kind: Set(kind.to_owned()),
            cert_pem: Set(cert_pem),
            key_pem: Set(key_pem.clone()),
            key_id: Set(key_id),
            team_id: Set(team_id),
            not_after: Set(not_after),
            updated_at: Set(at),
        };
        let _turn = self.write_turn().await;
        Entity::insert(row)
            .on_conflict(
                OnConflict::column(Column::Provider)
                    .update_columns([
                        Column::Kind,
                        Column::CertPem,
                        Column::KeyPem,
                        Column::KeyId,
                        Column::TeamId,
                        Column::NotAfter,
                        Column::UpdatedAt,
                    ])
                    .to_owned(),
            )
            .exec(&self.db)
            .await?;
        Ok(at)
    }

    /// Credentials stored after `since` (all of them for `None`), for instances to apply.
    pub async fn credentials_changed_since(
        &self,
        since: Option<DateTime<Utc>>,
    ) -> Result<Vec<StoredCredentials>, StoreError> {
        let mut query = Entity::find();
        if let Some(since) = since {
            query = query.filter(Column::UpdatedAt.gt(since));
        }
        query
            .all(&self.db)
            .await?
            .into_iter()
            .map(StoredCredentials::try_from)
            .collect()
    }
}
