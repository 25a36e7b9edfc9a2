//! Every integration test, in one binary: each file of its own linked the whole dependency tree
//! again (about 280 MB apiece with debug info), and nineteen of them filled the CI disk.
//! Each topic is a module; nextest still runs every test in its own process.

#[path = "../common/mod.rs"]
mod common;

mod adversity;
mod argo_rollouts;
mod chart;
mod cli;
mod crd_and_spec;
mod deletion;
mod demo;
mod fault_matrix;
mod idle;
mod incidents;
mod kube_rules;
mod kubectl;
mod leader;
mod machine_model;
mod machine_props;
mod memory_valkey;
mod metrics;
mod metrics_gate;
mod pod_gate;
mod redaction;
mod rotation;
mod schedule;
mod selectors;
mod stand_in;
mod stand_in_apply;
mod stand_in_metadata;
mod stand_in_pods;
mod stand_in_sets;
mod target_kinds;
mod tls;
mod trust;
mod verification;
mod zero_downtime;
