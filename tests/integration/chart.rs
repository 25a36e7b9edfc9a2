//! The Helm chart: rendered by Helm's own engine, its CRD is the operator's, and its RBAC is both
//! enough and no more than needed. The operator runs as its own process with exactly the
//! rendered Deployment's arguments, as the chart's ServiceAccount; the stand-in authorizes every
//! request of that identity against the rendered Roles and bindings, as kube-apiserver would.

use crate::common::process::*;
use crate::common::*;
use serde_json::{Value, json};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

#[test]
fn chart_lints_renders_and_refuses_bad_values() {
    let out = std::process::Command::new("python3")
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chart.py"))
        .arg("check")
        .output()
        .expect("python3 runs");
    let report = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{report}");
    for expected in [
        "render (default values): ok",
        "render (namespaced mode): ok",
        "bad values (unknown key): refused",
        "bad values (namespaces without a list): refused",
    ] {
        assert!(
            report.contains(expected),
            "missing {expected:?} in:\n{report}"
        );
    }
}

#[test]
fn the_charts_crd_is_the_operators_crd() {
    let generated: Value = serde_yaml::from_str(
        apikey_rotator::crd::crd_yaml()
            .split("---\n")
            .nth(1)
            .unwrap(),
    )
    .unwrap();
    let objects = render_chart(&[]);
    let mut rendered = of_kind(&objects, "CustomResourceDefinition")[0].clone();
    assert_eq!(
        rendered["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let metadata = rendered["metadata"].as_object_mut().unwrap();
    metadata.remove("annotations");
    metadata.remove("labels");
    assert_eq!(
        same_numbers(rendered),
        same_numbers(generated),
        "charts/apikey-rotator/files/apikeyrotation.yaml is stale: regenerate it with \
         `cargo run -- crd | tail -n +3 > charts/apikey-rotator/files/apikeyrotation.yaml`"
    );
    assert!(
        of_kind(
            &render_chart(&["crds.install=false"]),
            "CustomResourceDefinition"
        )
        .is_empty()
    );
}

/// Helm's toYaml writes `100.0` as `100`; both are the same schema bound.
fn same_numbers(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64().unwrap()),
        Value::Array(a) => Value::Array(a.into_iter().map(same_numbers).collect()),
        Value::Object(o) => {
            Value::Object(o.into_iter().map(|(k, v)| (k, same_numbers(v))).collect())
        }
        other => other,
    }
}

#[test]
fn the_pod_is_hardened_and_probed() {
    let objects = render_chart(&[]);
    let deployment = of_kind(&objects, "Deployment")[0];
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    assert_eq!(deployment["spec"]["replicas"], 2);
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(
        pod["securityContext"]["seccompProfile"]["type"],
        "RuntimeDefault"
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );
    assert_eq!(
        container["securityContext"]["capabilities"]["drop"],
        json!(["ALL"])
    );
    assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert!(deployment_args(&objects).contains(&"--leader-elect".to_string()));
    assert_eq!(of_kind(&objects, "PodDisruptionBudget").len(), 1);
    for o in &objects {
        assert_eq!(
            o["metadata"]["labels"]["app.kubernetes.io/name"], "apikey-rotator",
            "{}",
            o["kind"]
        );
    }
    // Optional pieces render only when asked for.
    assert!(of_kind(&objects, "ServiceMonitor").is_empty());
    let all = render_chart(&[
        "serviceMonitor.enabled=true",
        "networkPolicy.enabled=true",
        "grafanaDashboard.enabled=true",
    ]);
    assert_eq!(of_kind(&all, "ServiceMonitor").len(), 1);
    assert_eq!(of_kind(&all, "NetworkPolicy").len(), 1);
    let dashboard = of_kind(&all, "ConfigMap")[0];
    let json: Value =
        serde_json::from_str(dashboard["data"]["apikey-rotator.json"].as_str().unwrap()).unwrap();
    // Every metric the operator exports is plotted.
    let queries: Vec<String> = json["panels"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|panel| panel["targets"].as_array().unwrap())
        .map(|target| target["expr"].as_str().unwrap().to_string())
        .collect();
    let names = apikey_rotator::metrics::Metrics::catalogue();
    assert_eq!(names.len(), 14, "{names:?}");
    for name in names {
        assert!(
            queries.iter().any(|q| q.contains(&name)),
            "the dashboard does not plot {name}"
        );
    }
}

/// What happened when the operator ran with the chart's RBAC.
struct Outcome {
    completed: bool,
    denials: Vec<String>,
    /// (verb, resource) pairs the operator's identity used.
    used: BTreeSet<(String, String)>,
}

/// Installs the chart's RBAC (after `edit`), runs the operator as the chart does, and waits for a
/// full rotation, or for the first refused request when `stop_on_denial`.
async fn rotate_under_chart_rbac(
    sets: &[&str],
    edit: impl FnOnce(&mut Vec<Value>),
    stop_on_denial: bool,
) -> Outcome {
    let valkey = Valkey::start();
    let sim = start_sim().await;
    let mut objects = render_chart(sets);
    edit(&mut objects);
    create_rbac(&sim, &objects, &[TOKEN]);
    let old = known_key();
    // One target of each kind, so each is read, watched and patched under the chart's rules.
    sim.create_object(consumer_secret(&old)).unwrap();
    sim.set_nodes(&["node-a", "node-b"]);
    deploy_sirius_as(&sim, 2, &MIXED_KINDS).await;
    let mut manifest = rotation(&valkey.url(), targets_json(&MIXED_KINDS));
    manifest["metadata"]["annotations"] = json!({"keys.siriusscan.io/rotate": "first"});
    sim.create_object(manifest).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut operator = spawn_chart_operator(&sim, &objects, dir.path(), "op-0", TOKEN);

    let deadline = Instant::now() + Duration::from_secs(60);
    let completed = loop {
        let done = status(&sim).revision == 1 && has_event(&sim, Reason::RotationSucceeded);
        if done {
            break true;
        }
        if (stop_on_denial && !sim.denials().is_empty()) || Instant::now() > deadline {
            break false;
        }
        if let Ok(Some(status)) = operator.child.try_wait() {
            eprintln!("operator exited ({status}):\n{}", operator.log_text());
            break false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    operator.kill();
    if !completed && !stop_on_denial {
        eprintln!("operator log:\n{}", operator.log_text());
    }
    let used = sim
        .user_request_counts()
        .into_keys()
        .map(|(_, verb, resource)| (verb, resource))
        .collect();
    Outcome {
        completed,
        denials: sim.denials(),
        used,
    }
}

/// The (verb, resource) pairs the operator's rules grant (watch, list and get included).
fn granted(objects: &[Value]) -> BTreeSet<(String, String)> {
    let mut pairs = BTreeSet::new();
    for role in of_kind(objects, "ClusterRole")
        .into_iter()
        .chain(of_kind(objects, "Role"))
    {
        for rule in role["rules"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    pairs.insert((
                        verb.as_str().unwrap().to_string(),
                        resource.as_str().unwrap().to_string(),
                    ));
                }
            }
        }
    }
    pairs
}

fn assert_sufficient_and_used(sets: &[&str]) -> impl std::future::Future<Output = ()> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    async move {
        let sets: Vec<&str> = sets.iter().map(String::as_str).collect();
        let outcome = rotate_under_chart_rbac(&sets, |_| {}, false).await;
        assert!(outcome.denials.is_empty(), "refused: {:?}", outcome.denials);
        assert!(outcome.completed, "the rotation did not complete");
        // Every permission the chart grants was used, but for patching Events, which only
        // happens when an Event repeats (a retried step).
        let unused: Vec<_> = granted(&render_chart(&sets))
            .difference(&outcome.used)
            .filter(|(verb, resource)| !(verb == "patch" && resource == "events"))
            .cloned()
            .collect();
        assert!(unused.is_empty(), "granted but never used: {unused:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_completes_with_only_the_charts_cluster_rbac() {
    assert_sufficient_and_used(&[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_completes_with_only_the_charts_namespaced_rbac() {
    let sets = format!("rbac.scope=namespaces,rbac.watchNamespaces={{{NS}}}");
    let objects = render_chart(&[&sets]);
    assert!(of_kind(&objects, "ClusterRole").is_empty());
    assert!(deployment_args(&objects).contains(&format!("--namespace={NS}")));
    assert_sufficient_and_used(&[&sets]).await;
}

/// Each rule of the chart, taken out on its own, makes the operator get refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_of_the_chart_is_needed() {
    let objects = render_chart(&[]);
    let mut cases = Vec::new();
    for (kind, name) in of_kind(&objects, "ClusterRole")
        .into_iter()
        .chain(of_kind(&objects, "Role"))
        .map(|r| (r["kind"].clone(), r["metadata"]["name"].clone()))
    {
        let role = objects
            .iter()
            .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
            .unwrap();
        for index in 0..role["rules"].as_array().unwrap().len() {
            cases.push((kind.clone(), name.clone(), index));
        }
    }
    assert!(cases.len() >= 7, "{cases:?}");
    for (kind, name, index) in cases {
        let mut removed = Value::Null;
        let outcome = rotate_under_chart_rbac(
            &[],
            |objects| {
                let role = objects
                    .iter_mut()
                    .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
                    .unwrap();
                removed = role["rules"].as_array_mut().unwrap().remove(index);
            },
            true,
        )
        .await;
        let resources: Vec<&str> = removed["resources"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_str().unwrap())
            .collect();
        assert!(
            outcome.denials.iter().any(|d| resources
                .iter()
                .any(|r| d.contains(&format!("resource \"{r}\"")))),
            "without {kind} {name} rule {removed} nothing was refused: {:?}",
            outcome.denials
        );
        eprintln!(
            "without {} rule {}: refused, e.g. {}",
            kind, removed, outcome.denials[0]
        );
    }
}

/// Every rendered object is a valid object of its kind: it reads into the Kubernetes API types
/// (k8s-openapi) and writes back unchanged, so no field is misspelt or misplaced (kube-apiserver
/// would reject or drop it).
#[test]
fn every_rendered_object_matches_its_kubernetes_type() {
    use k8s_openapi::api::{apps, core, networking, policy, rbac};
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

    fn round_trip<T: serde::de::DeserializeOwned + serde::Serialize>(object: &Value) {
        let typed: T = serde_json::from_value(object.clone())
            .unwrap_or_else(|e| panic!("{}: {e}", object["kind"]));
        let back = serde_json::to_value(&typed).unwrap();
        assert_eq!(
            same_numbers(back),
            same_numbers(object.clone()),
            "{} {} changed through its type (a misspelt or misplaced field)",
            object["kind"],
            object["metadata"]["name"]
        );
    }
    for sets in [
        vec![],
        vec!["rbac.scope=namespaces,rbac.watchNamespaces={sirius}"],
        vec![
            "serviceMonitor.enabled=true,networkPolicy.enabled=true,grafanaDashboard.enabled=true",
            "networkPolicy.egress[0].ports[0].port=6379",
        ],
    ] {
        for object in render_chart(&sets) {
            match object["kind"].as_str().unwrap() {
                "Deployment" => round_trip::<apps::v1::Deployment>(&object),
                "Service" => round_trip::<core::v1::Service>(&object),
                "ServiceAccount" => round_trip::<core::v1::ServiceAccount>(&object),
                "ConfigMap" => round_trip::<core::v1::ConfigMap>(&object),
                "ClusterRole" => round_trip::<rbac::v1::ClusterRole>(&object),
                "ClusterRoleBinding" => round_trip::<rbac::v1::ClusterRoleBinding>(&object),
                "Role" => round_trip::<rbac::v1::Role>(&object),
                "RoleBinding" => round_trip::<rbac::v1::RoleBinding>(&object),
                "PodDisruptionBudget" => round_trip::<policy::v1::PodDisruptionBudget>(&object),
                "NetworkPolicy" => round_trip::<networking::v1::NetworkPolicy>(&object),
                "CustomResourceDefinition" => round_trip::<CustomResourceDefinition>(&object),
                // The Prometheus Operator's type: checked by hand, it has no Rust type here.
                "ServiceMonitor" => {
                    let spec = &object["spec"];
                    assert_eq!(spec["endpoints"][0]["port"], "metrics");
                    assert!(spec["selector"]["matchLabels"].is_object());
                }
                other => panic!("no check for rendered kind {other}"),
            }
        }
    }
}

/// `operator.argoRollouts` grants the Rollouts (and only then) and starts the operator with
/// `--argo-rollouts`.
#[test]
fn argo_rollouts_add_their_rule_and_flag_only_when_enabled() {
    let rollouts = |objects: &[Value]| {
        granted(objects)
            .iter()
            .filter(|(_, resource)| resource == "rollouts")
            .map(|(verb, _)| verb.clone())
            .collect::<BTreeSet<_>>()
    };
    let off = render_chart(&[]);
    assert!(rollouts(&off).is_empty());
    assert!(!deployment_args(&off).contains(&"--argo-rollouts".to_string()));
    let on = render_chart(&["operator.argoRollouts=true"]);
    assert_eq!(
        rollouts(&on),
        ["get", "list", "patch", "watch"].map(String::from).into()
    );
    assert!(deployment_args(&on).contains(&"--argo-rollouts".to_string()));
    let namespaced = render_chart(&[
        "operator.argoRollouts=true",
        &format!("rbac.scope=namespaces,rbac.watchNamespaces={{{NS}}}"),
    ]);
    assert_eq!(rollouts(&namespaced).len(), 4);
}
