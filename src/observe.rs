//! Reads the world one rotation depends on: the vault Secret, the consumers' Secret, the Valkey
//! records (the targets are read by [`crate::workload`]). The raw keys stay here, behind [`RawKey`]; the machine only
//! sees their ids.

use crate::crd::ApiKeyRotation;
use crate::crd::ValkeyConnection;
use crate::key::{KeyId, RawKey};
use crate::keystore::{KeyStore, KeyStoreError, RecordState};
use crate::rotation::{ConsumerView, RecordView, VaultView};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

/// Annotation on the vault naming the rotation revision its pending key belongs to.
pub const PENDING_REVISION_ANNOTATION: &str = "keys.siriusscan.io/pending-revision";
pub const VAULT_CURRENT: &str = "current";
pub const VAULT_PENDING: &str = "pending";

pub fn vault_name(akr: &ApiKeyRotation) -> String {
    crate::crd::vault_name(&akr.name_any())
}

/// On a vault recreated mid-rotation from the consumers' Secret (which held the new key): the id
/// of the old key, whose raw value was lost with the original vault.
pub const LOST_CURRENT_ANNOTATION: &str = "keys.siriusscan.io/lost-current-key-id";

/// The vault's raw keys, and the resourceVersion its next write must match.
pub struct Vault {
    /// The current key's raw value; `None` when it was lost (see [`LOST_CURRENT_ANNOTATION`]).
    pub current: Option<RawKey>,
    pub current_id: KeyId,
    pub pending: Option<(RawKey, u64)>,
    pub resource_version: Option<String>,
}

impl Vault {
    pub fn view(&self) -> VaultView {
        VaultView {
            current: self.current_id.clone(),
            pending: self.pending.as_ref().map(|(k, r)| (k.id(), *r)),
            current_raw_lost: self.current.is_none(),
        }
    }
}

pub fn secret_value(secret: &Secret, key: &str) -> Option<RawKey> {
    let bytes = secret.data.as_ref()?.get(key)?;
    let text = String::from_utf8(bytes.0.clone()).ok()?;
    // Sirius trims the key file; so do we, so ids match what the API computes.
    let text = text.trim();
    (!text.is_empty()).then(|| RawKey::new(text))
}

/// The vault's keys; `Ok(None)` for a vault Secret that exists but holds no key (emptied), which
/// counts as lost.
pub fn parse_vault(secret: &Secret) -> Result<Option<Vault>, String> {
    let current = secret_value(secret, VAULT_CURRENT);
    let pending = match secret_value(secret, VAULT_PENDING) {
        Some(k) => {
            let revision = secret
                .annotations()
                .get(PENDING_REVISION_ANNOTATION)
                .and_then(|r| r.parse().ok())
                .ok_or("the vault's pending key has no revision annotation")?;
            Some((k, revision))
        }
        None => None,
    };
    let current_id = match (&current, &pending) {
        (Some(k), _) => k.id(),
        (None, None) => return Ok(None),
        (None, Some(_)) => secret
            .annotations()
            .get(LOST_CURRENT_ANNOTATION)
            .and_then(|id| KeyId::parse(id))
            .ok_or("the vault Secret has no current key")?,
    };
    Ok(Some(Vault {
        current,
        current_id,
        pending,
        resource_version: secret.resource_version(),
    }))
}

pub async fn get_secret(api: &Api<Secret>, name: &str) -> Result<Option<Secret>, kube::Error> {
    api.get_opt(name).await
}

/// Whether this operator's label is on the Secret (it is what the Secret watch selects on).
pub fn is_labelled(secret: Option<&Secret>) -> bool {
    secret.is_some_and(|s| s.labels().contains_key(crate::crd::MANAGED_BY_LABEL))
}

/// When the Secret last changed, by the API server's clock: the latest of its creation and of
/// each manager's last write (`managedFields[].time`). Pods' creation times come from the same
/// clock, so the pod gate compares them with this rather than with the operator's own clock.
pub fn last_changed_at(secret: Option<&Secret>) -> Option<jiff::Timestamp> {
    let meta = &secret?.metadata;
    let written = meta
        .managed_fields
        .iter()
        .flatten()
        .filter_map(|entry| entry.time.as_ref().map(|t| t.0));
    meta.creation_timestamp
        .iter()
        .map(|t| t.0)
        .chain(written)
        .max()
}

/// Who else last wrote the Secret's data `key`, and when: the latest `managedFields` entry of
/// another manager that owns `data.<key>`. The operator's own force-applied writes take that
/// field over, so after its switch any such entry is a later write by someone else.
pub fn key_rewritten_by_other(
    secret: Option<&Secret>,
    key: &str,
    own_manager: &str,
) -> Option<(String, jiff::Timestamp)> {
    let field = format!("f:{key}");
    secret?
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|e| e.manager.as_deref() != Some(own_manager))
        .filter(|e| {
            e.fields_v1
                .as_ref()
                .is_some_and(|f| f.0.get("f:data").and_then(|d| d.get(&field)).is_some())
        })
        .filter_map(|e| Some((e.manager.clone().unwrap_or_default(), e.time.as_ref()?.0)))
        .max_by_key(|(_, at)| *at)
}

pub fn consumer_view(secret: Option<&Secret>, key: &str) -> (ConsumerView, Option<RawKey>) {
    match secret {
        None => (ConsumerView::Missing, None),
        Some(s) => {
            let raw = secret_value(s, key);
            (ConsumerView::Holds(raw.as_ref().map(RawKey::id)), raw)
        }
    }
}

pub async fn record_view(
    store: &KeyStore,
    spec: &ValkeyConnection,
    vault: Option<&Vault>,
) -> Result<RecordView, KeyStoreError> {
    let Some(vault) = vault else {
        return Ok(RecordView::default());
    };
    let current = vault.current_id.clone();
    let pending = vault.pending.as_ref().map(|(k, _)| k.id());
    let mut ids = vec![&current];
    if let Some(p) = &pending {
        ids.push(p);
    }
    let read = store.read_records(spec.prefixes(), &ids).await?;
    let valid = |i: usize| read.records.get(i) == Some(&RecordState::Valid);
    Ok(RecordView {
        current: valid(0),
        pending: pending.is_some() && valid(1),
        bootstrap_flag: read.bootstrap_flag,
        malformed: read.records.contains(&RecordState::Malformed),
        current_marked: read.marked.first() == Some(&true),
    })
}
