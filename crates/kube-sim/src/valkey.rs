//! A private `valkey-server` on a free loopback port, for tests and the demo: no persistence, its
//! own working directory, killed on drop.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct ValkeyServer {
    child: Child,
    pub port: u16,
    dir: PathBuf,
    tls: Option<Tls>,
}

/// A TLS-only server's certificates: `server.crt`, `server.key` and `ca.crt` (the CA clients'
/// certificates are checked against) in one directory.
#[derive(Clone)]
struct Tls {
    cert_dir: PathBuf,
    auth_clients: bool,
}

impl ValkeyServer {
    /// Starts one; a missing `valkey-server` binary is an error, never a silent skip.
    pub fn start() -> std::io::Result<Self> {
        Self::start_with(None)
    }

    /// Starts one that speaks TLS only (`--port 0 --tls-port`), with `server.crt`, `server.key`
    /// and `ca.crt` from `cert_dir`; `auth_clients` asks clients for a certificate the CA signed
    /// (mutual TLS). Its URL is `rediss://127.0.0.1:<port>/0`.
    pub fn start_tls(cert_dir: &Path, auth_clients: bool) -> std::io::Result<Self> {
        Self::start_with(Some(Tls {
            cert_dir: cert_dir.to_path_buf(),
            auth_clients,
        }))
    }

    fn start_with(tls: Option<Tls>) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "kube-sim-valkey-{}-{}",
            std::process::id(),
            free_port()?
        ));
        std::fs::create_dir_all(&dir)?;
        let mut last = None;
        for _ in 0..5 {
            let port = free_port()?;
            let child = spawn(port, &dir, tls.as_ref())?;
            let mut server = Self {
                child,
                port,
                dir: dir.clone(),
                tls: tls.clone(),
            };
            if server.wait_ready() {
                return Ok(server);
            }
            last = Some(port);
            server.stop();
        }
        Err(std::io::Error::other(format!(
            "valkey-server did not answer (last port {last:?})"
        )))
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    /// Kills the server; its data, kept only in memory, is lost.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): connections stay open and commands time out, as with a hung
    /// or partitioned Valkey; its data is kept.
    pub fn pause(&self) {
        signal(self.child.id(), "-STOP");
    }

    /// Thaws a paused server (SIGCONT).
    pub fn resume(&self) {
        signal(self.child.id(), "-CONT");
    }

    /// Starts an empty server on the same port again.
    pub fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        self.child = spawn(self.port, &self.dir, self.tls.as_ref())?;
        if self.wait_ready() {
            Ok(())
        } else {
            Err(std::io::Error::other(format!(
                "valkey-server did not come back on port {}",
                self.port
            )))
        }
    }

    fn wait_ready(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return false;
            }
            // A TLS port cannot answer a plain PING: accepting connections is enough there.
            let ready = if self.tls.is_some() {
                TcpStream::connect(("127.0.0.1", self.port)).is_ok()
            } else {
                ping(self.port)
            };
            if ready {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for ValkeyServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn spawn(port: u16, dir: &PathBuf, tls: Option<&Tls>) -> std::io::Result<Child> {
    let mut command = Command::new("valkey-server");
    match tls {
        None => command.args(["--port", &port.to_string()]),
        Some(tls) => command
            .args(["--port", "0", "--tls-port", &port.to_string()])
            .arg("--tls-cert-file")
            .arg(tls.cert_dir.join("server.crt"))
            .arg("--tls-key-file")
            .arg(tls.cert_dir.join("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(tls.cert_dir.join("ca.crt"))
            .args([
                "--tls-auth-clients",
                if tls.auth_clients { "yes" } else { "no" },
            ]),
    };
    command
        .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            std::io::Error::new(
                e.kind(),
                format!(
                    "valkey-server could not start ({e}); scripts/ensure-valkey.sh installs it"
                ),
            )
        })
}

/// RESP `PING` answered with `+PONG`.
fn ping(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
    let mut reply = [0u8; 7];
    stream.write_all(b"PING\r\n").is_ok()
        && stream.read_exact(&mut reply).is_ok()
        && &reply == b"+PONG\r\n"
}

fn signal(pid: u32, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill {sig} {pid} failed");
}
