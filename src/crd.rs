//! The `ApiKeyRotation` custom resource (group `keys.siriusscan.io`, version `v1alpha1`).
//!
//! Bounds, patterns and enums live in the schema so `kubectl apply` refuses a bad manifest with a
//! readable message; what the schema cannot express is checked by [`crate::spec_check`].

use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The field manager of every write the operator makes (server-side apply, updates, status).
pub const FIELD_MANAGER: &str = "apikey-rotator";

pub const GROUP: &str = "keys.siriusscan.io";
pub const FINALIZER: &str = "keys.siriusscan.io/cleanup";
/// Pod-template annotation holding the id of the key a rollout delivers.
pub const ROLLOUT_ANNOTATION: &str = "keys.siriusscan.io/key-id";
/// On a pod template rolled back by a failed rotation: that rotation's revision. It makes the
/// rollback a new template, so every pod restarts and reads the restored Secret (a return to the
/// previous template would scale up old pods that may have restarted with the new key).
pub const ROLLBACK_ANNOTATION: &str = "keys.siriusscan.io/rolled-back-in";
/// On a pod template rolled again because the consumers' Secret was changed to another key during
/// the rotation: how many times that happened. It makes the template new, so every pod restarts
/// and reads the restored Secret (pods started in between hold the other key).
pub const SECRET_RESTORES_ANNOTATION: &str = "keys.siriusscan.io/secret-restores";
/// Annotation on an ApiKeyRotation: each new value requests exactly one rotation.
pub const TRIGGER_ANNOTATION: &str = "keys.siriusscan.io/rotate";
/// Annotation on an ApiKeyRotation: when it holds the same token as [`TRIGGER_ANNOTATION`], that
/// one rotation starts and rolls out whether or not a maintenance window is open (a leaked key
/// cannot wait for Sunday night). A stale value never applies to a later token.
pub const OUTSIDE_WINDOWS_ANNOTATION: &str = "keys.siriusscan.io/rotate-outside-windows";
/// The operator's own Secret for the ApiKeyRotation named `rotation`: its vault of raw keys.
pub fn vault_name(rotation: &str) -> String {
    format!("{rotation}-apikey-vault")
}

/// Label on the Secrets this operator writes, naming the ApiKeyRotation (used to watch them).
pub const MANAGED_BY_LABEL: &str = "keys.siriusscan.io/rotation";

/// Rotates one Sirius service API key with zero downtime: mint, register in Valkey, switch the
/// consumers' Secret, roll the targets in order, validate, revoke the old key.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "keys.siriusscan.io",
    version = "v1alpha1",
    kind = "ApiKeyRotation",
    namespaced,
    status = "ApiKeyRotationStatus",
    shortname = "akr",
    category = "sirius",
    printcolumn = r#"{"name":"Phase","type":"string","jsonPath":".status.phase"}"#,
    printcolumn = r#"{"name":"Active Key","type":"string","jsonPath":".status.activeKeyIdShort","description":"First 12 hex characters of the active key's SHA-256 id"}"#,
    printcolumn = r#"{"name":"Step","type":"string","jsonPath":".status.currentRotation.step","priority":1}"#,
    printcolumn = r#"{"name":"Last Rotation","type":"date","jsonPath":".status.lastRotationTime"}"#,
    printcolumn = r#"{"name":"Next Rotation","type":"string","jsonPath":".status.nextRotationTime"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    validation = Rule::new("!has(self.spec.secret) || self.spec.secret.name != self.metadata.name + '-apikey-vault'")
        .message("spec.secret.name must not be this rotation's own vault Secret (<name>-apikey-vault)")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRotationSpec {
    /// The Secret the Sirius workloads read the key from.
    #[serde(default)]
    pub secret: ConsumerSecret,

    /// The format of minted keys.
    #[serde(default)]
    pub key: KeyFormat,

    /// Where Sirius keeps its key records.
    pub valkey: ValkeyConnection,

    /// Workloads restarted in this order, each entry only after the previous one finished its
    /// rollout. An entry names one workload or selects several by label; the workloads one entry
    /// selects roll at once, and the entry completes when all of them have.
    #[serde(default = "default_targets")]
    #[schemars(length(min = 1, max = 16))]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub targets: Vec<RolloutTarget>,

    /// How long a target may take to finish its rollout before the rotation fails (seconds).
    #[serde(default = "default_progress_deadline")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: u32,

    /// How long both keys stay valid after the last target finished, before the old key is revoked
    /// (seconds). Covers pods still terminating with the old key.
    #[serde(default = "default_validation_window")]
    #[schemars(range(min = 0, max = 604800))]
    pub validation_window_seconds: u32,

    /// Delay before re-checking a revocation (the API's last-used rewrite can re-create a record
    /// deleted while a request was in flight).
    #[serde(default = "default_revoke_recheck")]
    #[schemars(range(min = 1, max = 300))]
    pub revoke_recheck_seconds: u32,

    /// Rotate automatically this long after the last rotation (seconds). Absent: manual only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 3600, max = 31536000))]
    pub rotation_interval_seconds: Option<u32>,

    /// Rotate on a cron schedule in a time zone (instead of `rotationIntervalSeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule: Option<Schedule>,

    /// When set, a rotation, and each rollout of a rotation, starts only inside one of these
    /// windows (manual triggers included). A rollout under way when a window closes finishes; the
    /// next target waits for the next window. Validation and revocation need no window.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 16))]
    pub maintenance_windows: Vec<MaintenanceWindow>,

    /// Live checks with the keys themselves: after each target's rollout and before revoking,
    /// the API must accept the new key; after revoking, it must refuse the old one. A failed check
    /// is handled like a failed rollout (`failurePolicy`). Absent: no probes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification: Option<Verification>,

    /// A Prometheus query (for example the API's 401 rate) that must stay at or under a
    /// threshold throughout the validation window; over it, the rotation fails per
    /// `failurePolicy` and the old key is not revoked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_gate: Option<MetricsGate>,

    /// What a failed rollout does: `Halt` (default) keeps both keys valid and waits; `Rollback`
    /// restores the old key in the Secret, rolls already-rolled targets back in reverse order and
    /// removes the new key's record.
    #[serde(default)]
    pub failure_policy: FailurePolicy,

    /// What happens when someone else edits or deletes the consumers' Secret outside a rotation:
    /// `Restore` (default) writes the active key back; `Report` only reports it.
    #[serde(default)]
    pub secret_drift_policy: SecretDriftPolicy,

    /// What deleting this ApiKeyRotation does: `Retain` (default) leaves the consumers' Secret
    /// and every key valid; `Revoke` (decommissioning a Sirius install) deletes the Valkey records
    /// of the keys this rotation manages and its state and history, so those keys are refused.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// What the operator does when the active key's record is deleted while Valkey is otherwise
    /// intact (someone revoked the key in Sirius, e.g. a leaked key deleted in the UI):
    /// `Rotate` (default) treats it as a revocation and rotates at once, outside maintenance
    /// windows, without restoring the revoked key; `Restore` writes the record back. A flush or
    /// a Valkey restarted empty is always restored.
    #[serde(default)]
    pub external_revocation: ExternalRevocation,

    /// Pods that read the consumers' Secret but belong to no target (a worker, a Job's or a
    /// CronJob's pods, a bare pod): `Wait` (default) holds the revocation of the old key until
    /// each of them was started on the new key or is gone; `Ignore` revokes anyway (said in the
    /// `UntrackedConsumer` Event).
    #[serde(default)]
    pub untracked_consumers: UntrackedConsumers,

    /// How long the revocation may wait for pods still on the old key before the rotation is
    /// `Degraded/ConsumersOnOldKey`. It keeps waiting after that: a timeout never revokes.
    #[serde(default = "default_pod_gate_timeout")]
    #[schemars(range(min = 30, max = 604800))]
    pub pod_gate_timeout_seconds: u32,

    /// No new rotation starts and a rotation in flight pauses at its next step boundary.
    #[serde(default)]
    pub suspend: bool,

    /// How many finished rotations are kept in Valkey history.
    #[serde(default = "default_history_limit")]
    #[schemars(range(min = 1, max = 100))]
    pub history_limit: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSecret {
    /// Name of the Secret in this namespace (created when missing; other data keys are kept).
    #[serde(default = "default_secret_name")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub name: String,
    /// Data key holding the raw API key.
    #[serde(default = "default_secret_key")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9]+$"))]
    pub key: String,
}

impl Default for ConsumerSecret {
    fn default() -> Self {
        Self {
            name: default_secret_name(),
            key: default_secret_key(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct KeyFormat {
    /// Literal prefix of minted keys (Sirius uses `sk_`).
    #[serde(default = "default_key_prefix")]
    #[schemars(length(max = 16), regex(pattern = r"^[A-Za-z0-9_\-]*$"))]
    pub prefix: String,
    /// Random bytes from the OS CSPRNG, hex encoded after the prefix.
    #[serde(default = "default_random_bytes")]
    #[schemars(range(min = 16, max = 64))]
    pub random_bytes: u32,
    /// Label of the Valkey records this operator writes (Sirius allows 1 to 64 characters).
    #[serde(default = "default_label")]
    #[schemars(length(min = 1, max = 64))]
    pub label: String,
}

impl Default for KeyFormat {
    fn default() -> Self {
        Self {
            prefix: default_key_prefix(),
            random_bytes: default_random_bytes(),
            label: default_label(),
        }
    }
}

#[derive(Serialize, Deserialize, Clone, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new(
        "!self.operatorPrefix.startsWith(self.recordPrefix) && !self.recordPrefix.startsWith(self.operatorPrefix)"
    ).message("operatorPrefix and recordPrefix must not overlap: Sirius would list the operator's state as keys"),
    validation = Rule::new(
        "!has(self.tls) || self.url.startsWith('rediss://') || self.url.startsWith('valkeys://')"
    ).message("tls needs a rediss:// or valkeys:// URL")
)]
pub struct ValkeyConnection {
    /// `redis://`, `rediss://` (TLS), `valkey://` or `valkeys://` (TLS) URL, host and port, and
    /// optionally the database (Sirius uses 0).
    #[schemars(
        length(min = 1, max = 512),
        regex(pattern = r"^(redis|rediss|valkey|valkeys)://[^\s]+$")
    )]
    pub url: String,
    /// Secret (in this namespace) holding the Valkey password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// Prefix of Sirius's key records.
    #[serde(default = "default_record_prefix")]
    #[schemars(length(min = 1, max = 64))]
    pub record_prefix: String,
    /// Prefix of this operator's own state and history (never under Sirius's record prefix).
    #[serde(default = "default_operator_prefix")]
    #[schemars(length(min = 1, max = 64))]
    pub operator_prefix: String,
    /// TLS with a private CA (cert-manager's, an in-house one) and, for mutual TLS, a client
    /// certificate. Needs a `rediss://` or `valkeys://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ValkeyTls>,
    /// Accept a TLS server certificate that does not verify: UNSAFE, for test set-ups only (anyone
    /// on the path can then read the records and the password). It overrides `tls.caSecretRef`; a
    /// client certificate from `tls.certSecretRef` is still presented.
    #[serde(default)]
    pub insecure_skip_tls_verify: bool,
}

/// What the Valkey TLS client trusts and presents. The server certificate must name the URL's
/// host: the redis client (redis-rs 1.8) verifies the name it connects to and has no setting for
/// another one (its TLS server name is always the URL's host, and its connection manager takes
/// no custom resolver), so there is no `serverName` field; use a URL host the certificate names
/// (for example the Service's DNS name, `sirius-valkey.sirius.svc`).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ValkeyTls {
    /// Secret (in this namespace) holding a PEM bundle of the CA certificate(s) to trust instead
    /// of the public (webpki) roots. Without it the public roots are trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<CaSecretRef>,
    /// Secret (in this namespace) holding the client certificate chain and private key, PEM, for
    /// mutual TLS (`--tls-auth-clients yes`). Shaped like a `kubernetes.io/tls` Secret by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert_secret_ref: Option<ClientCertSecretRef>,
    /// The name the server's certificate carries, when it is not the URL's host: for example a
    /// URL that names a pod IP or a ClusterIP while the certificate names the Service. The
    /// certificate is checked against it and SNI sends it; the connection still goes to the
    /// URL's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253))]
    pub server_name: Option<String>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaSecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Data key of the PEM bundle (cert-manager writes the issuing CA to `ca.crt`).
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientCertSecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Data key of the PEM certificate chain.
    #[serde(default = "default_cert_key")]
    #[schemars(length(min = 1, max = 253))]
    pub cert_key: String,
    /// Data key of the PEM private key (PKCS#8, PKCS#1 or SEC1).
    #[serde(default = "default_private_key_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key_key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Schedule {
    /// Five-field cron expression (minute hour day-of-month month day-of-week), or a nickname
    /// such as `@weekly`. Across DST changes, a time skipped by the clock runs right after the
    /// gap, and a repeated time runs once.
    #[schemars(length(min = 1, max = 128))]
    pub cron: String,
    /// IANA time zone the expression is read in.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
    /// Delay each scheduled rotation by up to this many seconds: a share that is stable for this
    /// ApiKeyRotation and scheduled time, so many rotations on one schedule spread out.
    #[serde(default)]
    #[schemars(range(max = 86400))]
    pub jitter_seconds: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MaintenanceWindow {
    /// When the window opens: a five-field cron expression.
    #[schemars(length(min = 1, max = 128))]
    pub start: String,
    /// How long it stays open, in minutes (real time, also across DST changes).
    #[schemars(range(min = 1, max = 10080))]
    pub duration_minutes: u32,
    /// IANA time zone `start` is read in.
    #[serde(default = "default_time_zone")]
    #[schemars(length(min = 1, max = 64))]
    pub time_zone: String,
}

#[derive(Serialize, Deserialize, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Verification {
    /// Requested with GET and the key in `header`; for Sirius `http://sirius-api:9001/host/`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub url: String,
    /// The header carrying the key.
    #[serde(default = "default_key_header")]
    #[schemars(length(min = 1, max = 128), regex(pattern = r"^[A-Za-z0-9-]+$"))]
    pub header: String,
    /// How long one request may take (seconds).
    #[serde(default = "default_probe_timeout")]
    #[schemars(range(min = 1, max = 60))]
    pub timeout_seconds: u32,
    /// Answers that show the new key is accepted.
    #[serde(default = "default_accepted_status")]
    #[schemars(length(min = 1, max = 16), inner(range(min = 100, max = 599)))]
    pub accepted_status_codes: Vec<u16>,
    /// The answer that shows the old key is refused once revoked.
    #[serde(default = "default_refused_status")]
    #[schemars(range(min = 100, max = 599))]
    pub refused_status_code: u16,
    /// How often the old key is revoked again while the probe still sees it accepted; then the
    /// rotation fails with OldKeyStillAccepted.
    #[serde(default = "default_max_revocations")]
    #[schemars(range(min = 1, max = 100))]
    pub max_revocations: u32,
}

// The URLs may carry credentials (`redis://user:pass@host`): `Debug` prints them redacted.

impl ValkeyConnection {
    pub fn prefixes(&self) -> crate::keystore::Prefixes<'_> {
        crate::keystore::Prefixes {
            records: &self.record_prefix,
            operator: &self.operator_prefix,
        }
    }
}

impl std::fmt::Debug for ValkeyConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ValkeyConnection")
            .field("url", &crate::redact::url(&self.url))
            .field("password_secret_ref", &self.password_secret_ref)
            .field("record_prefix", &self.record_prefix)
            .field("operator_prefix", &self.operator_prefix)
            .field("insecure_skip_tls_verify", &self.insecure_skip_tls_verify)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Verification {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verification")
            .field("url", &crate::redact::url(&self.url))
            .field("header", &self.header)
            .field("timeout_seconds", &self.timeout_seconds)
            .field("accepted_status_codes", &self.accepted_status_codes)
            .field("refused_status_code", &self.refused_status_code)
            .field("max_revocations", &self.max_revocations)
            .finish()
    }
}

impl std::fmt::Debug for MetricsGate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsGate")
            .field("prometheus_url", &crate::redact::url(&self.prometheus_url))
            .field("query", &crate::redact::text(&self.query))
            .field("threshold", &self.threshold)
            .field("interval_seconds", &self.interval_seconds)
            .finish()
    }
}

#[derive(Serialize, Deserialize, Clone, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MetricsGate {
    /// Base URL of the Prometheus HTTP API, e.g. `http://prometheus-operated.monitoring.svc:9090`.
    #[schemars(length(min = 1, max = 2048), regex(pattern = r"^https?://[^\s]+$"))]
    pub prometheus_url: String,
    /// An instant query with one numeric result, e.g.
    /// `sum(rate(sirius_api_http_requests_total{code="401"}[1m]))`. No series counts as 0.
    #[schemars(length(min = 1, max = 4096))]
    pub query: String,
    /// The result may not go over this.
    pub threshold: f64,
    /// How often the query runs during the validation window (seconds); it also runs once when
    /// the window ends, before the revocation.
    #[serde(default = "default_gate_interval")]
    #[schemars(range(min = 1, max = 3600))]
    pub interval_seconds: u32,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutTarget {
    /// Kind of workload: `Deployment` (the default), `StatefulSet` or `DaemonSet` (`apps/v1`), or
    /// `Rollout` (Argo Rollouts, `argoproj.io/v1alpha1`).
    #[serde(default)]
    pub kind: TargetKind,
    /// Name of the workload in this namespace. Exactly one of `name` and `selector` is set.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"),
        transform = without_default
    )]
    pub name: String,
    /// Selects the workloads of `kind` in this namespace by label, instead of `name`. The
    /// workloads it matches when a rotation starts are that rotation's plan (a workload that
    /// starts matching later waits for the next rotation); they roll at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Overrides `spec.progressDeadlineSeconds` for this target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 10, max = 86400))]
    pub progress_deadline_seconds: Option<u32>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum SecretDriftPolicy {
    #[default]
    Restore,
    Report,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ExternalRevocation {
    #[default]
    Rotate,
    Restore,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum UntrackedConsumers {
    #[default]
    Wait,
    Ignore,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum DeletionPolicy {
    #[default]
    Retain,
    Revoke,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum FailurePolicy {
    #[default]
    Halt,
    Rollback,
}

#[derive(
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Default,
    JsonSchema,
)]
pub enum TargetKind {
    #[default]
    Deployment,
    StatefulSet,
    DaemonSet,
    /// An Argo Rollout (`argoproj.io/v1alpha1`); needs the operator's `--argo-rollouts`.
    Rollout,
}

impl std::fmt::Display for TargetKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

fn default_gate_interval() -> u32 {
    15
}
fn default_key_header() -> String {
    "X-API-Key".into()
}
fn default_probe_timeout() -> u32 {
    5
}
fn default_accepted_status() -> Vec<u16> {
    vec![200]
}
fn default_refused_status() -> u16 {
    401
}
fn default_max_revocations() -> u32 {
    5
}
fn default_time_zone() -> String {
    "UTC".into()
}
fn default_secret_name() -> String {
    "sirius-api-key".into()
}
fn default_secret_key() -> String {
    "SIRIUS_API_KEY".into()
}
fn default_key_prefix() -> String {
    "sk_".into()
}
fn default_random_bytes() -> u32 {
    32
}
fn default_label() -> String {
    "apikey-rotator".into()
}
fn default_record_prefix() -> String {
    "apikey:".into()
}
fn default_operator_prefix() -> String {
    "apikey-rotator:".into()
}
fn default_ca_key() -> String {
    "ca.crt".into()
}
fn default_cert_key() -> String {
    "tls.crt".into()
}
fn default_private_key_key() -> String {
    "tls.key".into()
}
fn default_progress_deadline() -> u32 {
    600
}
fn default_validation_window() -> u32 {
    300
}
fn default_revoke_recheck() -> u32 {
    5
}
fn default_history_limit() -> u32 {
    10
}
fn default_pod_gate_timeout() -> u32 {
    3600
}
fn default_targets() -> Vec<RolloutTarget> {
    ["sirius-api", "sirius-ui", "sirius-engine"]
        .into_iter()
        .map(|name| RolloutTarget::named(TargetKind::Deployment, name))
        .collect()
}

/// A label selector as `kubectl get -l` takes it (`app=api,tier in (a,b)`): how the status shows
/// it and how a rotation's plan compares it with the spec. An invalid one shows its parse error.
pub fn selector_text(selector: &LabelSelector) -> String {
    match kube::core::Selector::try_from(selector.clone()) {
        Ok(s) => s.to_string(),
        Err(e) => format!("(invalid selector: {e})"),
    }
}

/// An absent `name` must stay absent: a schema default of "" would fail the name's own pattern.
fn without_default(schema: &mut schemars::Schema) {
    schema.remove("default");
}

/// The label selector of the [`RolloutTarget`]s that select their workloads.
pub type LabelSelector = k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

impl RolloutTarget {
    /// A target that names its workload.
    pub fn named(kind: TargetKind, name: &str) -> Self {
        Self {
            kind,
            name: name.to_string(),
            selector: None,
            progress_deadline_seconds: None,
        }
    }

    /// How the target is written in messages: `Deployment api`, or `Deployment app=api`.
    pub fn describe(&self) -> String {
        match &self.selector {
            Some(selector) => format!("{} {}", self.kind, selector_text(selector)),
            None => format!("{} {}", self.kind, self.name),
        }
    }

    pub fn deadline_seconds(&self, spec: &ApiKeyRotationSpec) -> u32 {
        self.progress_deadline_seconds
            .unwrap_or(spec.progress_deadline_seconds)
    }
}

/// Observed state, written only by the operator (server-side apply on the status subresource).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyRotationStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
    /// SHA-256 id (lowercase hex) of the key consumers should hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id: Option<String>,
    /// First 12 characters of `activeKeyId`, for `kubectl get`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_key_id_short: Option<String>,
    /// SHA-256 id of the key that was active before the last rotation (revoked once it finished).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_key_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_rotation: Option<RotationProgress>,
    /// Finished rotations so far.
    #[serde(default)]
    pub revision: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rotation_time: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation_time: Option<String>,
    /// Sirius v1.0's `bootstrap_complete` flag was seen in Valkey; the operator keeps it there.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub bootstrap_flag_in_use: bool,
    /// The last trigger annotation value acted on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_trigger: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum Phase {
    /// Setting up: adopting or minting the first key.
    Pending,
    /// The active key is registered and delivered; no rotation in flight.
    Ready,
    /// A rotation is in flight.
    Rotating,
    /// Suspended by `spec.suspend`.
    Suspended,
    /// Something needs attention; see the `Degraded` condition.
    Degraded,
}

/// A status condition in the shape of `metav1.Condition`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Condition {
    #[serde(rename = "type")]
    pub type_: String,
    /// `True`, `False` or `Unknown`.
    pub status: String,
    pub reason: String,
    pub message: String,
    pub last_transition_time: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// The rotation in flight.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RotationProgress {
    /// The revision this rotation will become (`status.revision + 1`).
    pub revision: u64,
    /// What started it: `Initial`, `Interval`, `Schedule`, `Manual:<token>`.
    pub trigger: String,
    /// SHA-256 id of the new key, once minted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub new_key_id: Option<String>,
    /// SHA-256 id of the key being replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_key_id: Option<String>,
    pub step: Step,
    /// Index into `spec.targets` of the target being rolled.
    #[serde(default)]
    pub target_index: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetProgress>,
    pub started_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub validation_started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<String>,
    #[serde(default)]
    pub revoke_attempts: u32,
    /// When the metrics gate last passed, and the value it read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_checked_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gate_value: Option<f64>,
    /// When the API accepted the new key at the end of the validation window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_before_revoke_at: Option<String>,
    /// When the API refused the old key after its revocation (the runbook's "confirm old key
    /// returns 401").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_key_refused_at: Option<String>,
    /// Set when the rotation failed under `failurePolicy: Rollback` and is being undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling_back: Option<String>,
    /// Requested outside maintenance windows: it starts and rolls out whenever it can.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub outside_windows: bool,
    /// Started because the old key was revoked in Sirius itself: its record is not restored.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub old_key_revoked_externally: bool,
    /// How often someone put another key into the consumers' Secret after the targets began to
    /// roll (and the operator wrote the new key back): the targets rolled before are rolled again.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub secret_restores: u32,
    /// The consumers' Secret was found without the new key, and what its restore changes is
    /// recorded; the new key is being written back.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub restoring_secret: bool,
    /// The consumers' Secret this rotation started with (with `targets`, its fixed plan: edits
    /// of the spec made since apply to the next rotation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<ConsumerSecret>,
    /// The spec's targets or Secret were edited during this rotation (the edit is pending).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub spec_change_pending: bool,
    /// When the consumers' Secret last changed (by the API server's clock) as it was first seen
    /// holding the new key: a pod of no target created after it (and a margin for the kubelet's
    /// Secret cache) started on the new key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_at: Option<String>,
    /// During a rollback: when the consumers' Secret was first seen holding the old key again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub switched_back_at: Option<String>,
    /// When the revocation started to wait for pods still on the old key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_waiting_since: Option<String>,
    /// Pods that read the consumers' Secret and may still hold the old key, at the last check.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_on_old_key: Option<u32>,
    /// The `UntrackedConsumer` Event was published for this rotation.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub untracked_consumers_reported: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetProgress {
    #[serde(default)]
    pub kind: TargetKind,
    pub name: String,
    /// The label selector of the `spec.targets` entry that chose this workload, as `kubectl get
    /// -l` takes it (absent: the entry named it). The workloads of one entry roll at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    pub state: TargetState,
    /// This target's pods that may still hold the old key, at the last check before revoking.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods_on_old_key: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolled_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<String>,
    /// When the API accepted the new key after this target's rollout (with `verification`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verified_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl TargetProgress {
    /// A target this rotation has not rolled yet.
    pub fn pending(kind: TargetKind, name: &str) -> Self {
        Self {
            kind,
            name: name.to_string(),
            selector: None,
            pods_on_old_key: None,
            state: TargetState::Pending,
            rolled_at: None,
            completed_at: None,
            verified_at: None,
            message: None,
        }
    }
}

impl RotationProgress {
    /// A rotation at its first step: nothing minted, rolled or checked yet.
    pub fn started<'a>(
        revision: u64,
        trigger: String,
        old_key_id: Option<String>,
        targets: impl IntoIterator<Item = &'a RolloutTarget>,
        started_at: String,
    ) -> Self {
        Self {
            revision,
            trigger,
            new_key_id: None,
            old_key_id,
            step: Step::Mint,
            target_index: 0,
            targets: targets
                .into_iter()
                .map(|t| TargetProgress::pending(t.kind, &t.name))
                .collect(),
            started_at,
            validation_started_at: None,
            revoked_at: None,
            revoke_attempts: 0,
            gate_checked_at: None,
            gate_value: None,
            verified_before_revoke_at: None,
            old_key_refused_at: None,
            rolling_back: None,
            outside_windows: false,
            old_key_revoked_externally: false,
            secret_restores: 0,
            restoring_secret: false,
            secret: None,
            spec_change_pending: false,
            switched_at: None,
            switched_back_at: None,
            pods_waiting_since: None,
            pods_on_old_key: None,
            untracked_consumers_reported: false,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum TargetState {
    Pending,
    Rolling,
    Complete,
    Failed,
}

/// The steps of a rotation, in order.
#[derive(
    Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, JsonSchema,
)]
pub enum Step {
    Mint,
    Register,
    Switch,
    Roll,
    Validate,
    Revoke,
    Finish,
}

/// The longest ApiKeyRotation name: the operator labels its Secrets with the name, and a label
/// value has at most 63 characters (the vault `<name>-apikey-vault` and Event names then fit too).
pub const MAX_NAME_LENGTH: usize = 63;

/// The CRD, with the name's bound (a structural schema may restrict `metadata.name`), so
/// kube-apiserver refuses a longer name at admission.
pub fn crd()
-> k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition {
    let mut crd = ApiKeyRotation::crd();
    for version in &mut crd.spec.versions {
        if let Some(schema) = version
            .schema
            .as_mut()
            .and_then(|s| s.open_api_v3_schema.as_mut())
        {
            let name: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::JSONSchemaProps =
                serde_json::from_value(serde_json::json!({
                    "type": "object",
                    "properties": {"name": {"type": "string", "maxLength": MAX_NAME_LENGTH}},
                }))
                .expect("a valid schema");
            schema
                .properties
                .get_or_insert_with(Default::default)
                .insert("metadata".into(), name);
        }
    }
    crd
}

/// The CRD as YAML, exactly as shipped in `crds/`.
pub fn crd_yaml() -> String {
    let crd = crd();
    let body = serde_yaml::to_string(&crd).expect("the CRD serializes");
    format!("# Generated by `apikey-rotator crd`; do not edit.\n---\n{body}")
}
