//! The operator binary as its own process (as a pod runs it), and the Helm chart rendered by
//! Helm's own engine.

use kube_sim::{Sim, User};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// A kubeconfig for the stand-in; with a token, the stand-in authorizes the requests by RBAC.
pub fn write_kubeconfig(dir: &Path, sim: &Sim, token: Option<&str>) -> PathBuf {
    let path = dir.join(format!("kubeconfig-{}", token.unwrap_or("admin")));
    let user = match token {
        Some(t) => format!("{{token: \"{t}\"}}"),
        None => "{}".into(),
    };
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters: [{{name: sim, cluster: {{server: \"{}\"}}}}]\n\
             users: [{{name: op, user: {user}}}]\n\
             contexts: [{{name: sim, context: {{cluster: sim, user: op, namespace: default}}}}]\n\
             current-context: sim\n",
            sim.url()
        ),
    )
    .unwrap();
    path
}

/// A running `apikey-rotator` process; killed (SIGKILL) when dropped. Its log goes to a file.
pub struct OperatorProcess {
    pub child: Child,
    pub log: PathBuf,
}

impl OperatorProcess {
    pub fn spawn(kubeconfig: &Path, args: &[String], envs: &[(&str, &str)], log: PathBuf) -> Self {
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_apikey-rotator"))
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .env_remove("RUST_LOG")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .unwrap();
        Self { child, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status (None if it did not exit within `timeout`).
    pub fn terminate(&mut self, timeout: std::time::Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        None
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for OperatorProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `scripts/chart.py render` with these `--set` expressions: the chart's objects, rendered by
/// Helm's Go engine (helm-python-sdk). Panics with the reason when the renderer is missing.
pub fn render_chart(sets: &[&str]) -> Vec<Value> {
    let mut command = Command::new("python3");
    command.arg(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/chart.py"));
    command.arg("render");
    for s in sets {
        command.args(["--set", s]);
    }
    let out = command.output().expect("python3 runs");
    assert!(
        out.status.success(),
        "rendering the chart failed (scripts/test.sh installs helm-python-sdk): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| {
            let v: Value = serde::Deserialize::deserialize(doc).unwrap();
            v
        })
        .filter(|v| !v.is_null())
        .collect()
}

/// The rendered objects of one kind.
pub fn of_kind<'a>(objects: &'a [Value], kind: &str) -> Vec<&'a Value> {
    objects.iter().filter(|o| o["kind"] == kind).collect()
}

/// The operator container's args in the rendered Deployment.
pub fn deployment_args(objects: &[Value]) -> Vec<String> {
    let deployment = of_kind(objects, "Deployment")[0];
    deployment["spec"]["template"]["spec"]["containers"][0]["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap().to_string())
        .collect()
}

/// The chart's release namespace and the token its ServiceAccount authenticates with.
pub const RELEASE_NS: &str = "apikey-rotator-system";
pub const TOKEN: &str = "operator-sa-token";

/// Creates the rendered ServiceAccount, Roles and bindings in the stand-in; requests bearing any
/// of `tokens` then act as the chart's ServiceAccount and are authorized by those rules.
pub fn create_rbac(sim: &Sim, objects: &[Value], tokens: &[&str]) {
    for kind in [
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
    ] {
        for o in of_kind(objects, kind) {
            sim.create_object(o.clone())
                .unwrap_or_else(|e| panic!("{kind}: {e}"));
        }
    }
    for token in tokens {
        sim.authenticate(token, User::service_account(RELEASE_NS, "apikey-rotator"));
    }
}

/// The chart's operator as its own process: the rendered Deployment's arguments, the pod's
/// environment, and the ServiceAccount's identity (`token`).
pub fn spawn_chart_operator(
    sim: &Sim,
    objects: &[Value],
    dir: &Path,
    pod: &str,
    token: &str,
) -> OperatorProcess {
    let kubeconfig = write_kubeconfig(dir, sim, Some(token));
    let args: Vec<String> = deployment_args(objects)
        .into_iter()
        .map(|a| {
            // Every process of a test run serves its endpoints on a port of its own.
            if a.starts_with("--metrics-bind-address=") {
                "--metrics-bind-address=127.0.0.1:0".into()
            } else {
                a
            }
        })
        .collect();
    OperatorProcess::spawn(
        &kubeconfig,
        &args,
        &[
            ("POD_NAME", pod),
            ("POD_NAMESPACE", RELEASE_NS),
            ("LOG_FORMAT", "text"),
        ],
        dir.join(format!("{pod}.log")),
    )
}
