//! apikey-rotator: a Kubernetes operator that rotates the Sirius scanner's service API key with
//! zero downtime.
//!
//! - [`rotation`] decides (pure, synchronous); [`reconciler`] acts; [`controller`] wires watches.
//! - [`key`] keeps raw keys behind a type that cannot be logged; [`keystore`] and [`sirius`] speak
//!   Sirius's Valkey record format.

pub mod backoff;
pub mod claims;
pub mod cli;
pub mod clock;
pub mod controller;
pub mod crd;
#[cfg(feature = "demo")]
pub mod demo;
pub mod handover;
pub mod key;
pub mod keystore;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod operator;
pub mod plan;
pub mod pod_view;
pub mod pods;
pub mod probe;
pub mod reconciler;
pub mod redact;
pub mod relist;

pub mod rotation;
pub mod schedule;
pub mod server;
pub mod sirius;
pub mod spec_check;
pub mod telemetry;
pub mod trust;
pub mod valkey_endpoint;
pub mod valkey_link;
pub mod valkey_tls;
pub mod valkey_watch;
pub mod workload;
