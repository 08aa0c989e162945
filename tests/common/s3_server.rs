//! A SeaweedFS S3 server of the test's own (`scripts/s3-server` on a port
//! block of its own and a state folder of its own), for tests that take S3
//! away mid-operation without touching the server other tests share. Stopped,
//! within a deadline, when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::bin::s;

/// How long a stop may take before the script is killed: its own limits are
/// 30 s for the process and 15 s for the ports.
const STOP_DEADLINE: Duration = Duration::from_secs(60);

pub struct OwnS3 {
    /// State folder: data/, weed.log, env.
    pub dir: tempfile::TempDir,
    pub port: u16,
}

impl OwnS3 {
    /// Starts a server on the first block of free ports from 25000 (the S3
    /// port and the next four, each also 10000 higher for gRPC), away from
    /// the shared server's 8333 and from tests/s3.rs's block at 21000.
    pub fn start() -> OwnS3 {
        let dir = tempfile::tempdir().unwrap();
        let first = (std::process::id() % 400) as u16;
        let port = (0..400)
            .map(|i| 25_000 + ((first + i) % 400) * 10)
            .find(|&p| block_free(p))
            .expect("no free port block in 25000..29000 (and +10000)");
        let server = OwnS3 { dir, port };
        server.start_again();
        server
    }

    fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server")
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its endpoint and test identity, from the `env` file the start wrote.
    pub fn env(&self) -> super::S3Env {
        let vars = super::env_file(&self.dir.path().join("env"));
        let get = |k: &str| {
            vars.get(k)
                .cloned()
                .unwrap_or_else(|| panic!("{k} missing from {}/env", self.dir.path().display()))
        };
        super::S3Env {
            endpoint: get("HOLDFAST_S3_ENDPOINT"),
            access_key_id: get("AWS_ACCESS_KEY_ID"),
            secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
        }
    }

    /// Starts the stopped server again, on the same ports with the same data.
    pub fn start_again(&self) {
        let out = Command::new(Self::script())
            .args(["start", s(self.dir.path())])
            .env("HOLDFAST_S3_PORT", self.port.to_string())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "scripts/s3-server start on port {}: {}{}",
            self.port,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Stops the server and waits until its ports are free; panics past the deadline.
    pub fn stop(&self) {
        if let Err(why) = self.stop_within(STOP_DEADLINE) {
            panic!("{why}");
        }
    }

    fn stop_within(&self, deadline: Duration) -> Result<(), String> {
        let mut child: Child = Command::new(Self::script())
            .args(["stop", s(self.dir.path())])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run scripts/s3-server stop: {e}"))?;
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                let mut err = String::new();
                if let Some(mut e) = child.stderr.take() {
                    let _ = std::io::Read::read_to_string(&mut e, &mut err);
                }
                return if status.success() {
                    Ok(())
                } else {
                    Err(format!(
                        "scripts/s3-server stop {} failed: {err}",
                        self.dir.path().display()
                    ))
                };
            }
            if Instant::now() > end {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "scripts/s3-server stop {} did not finish within {deadline:?}",
                    self.dir.path().display()
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        if let Err(why) = self.stop_within(STOP_DEADLINE) {
            eprintln!("{why}");
        }
    }
}

/// Every port `scripts/s3-server` takes for S3 port `p` can be bound now.
fn block_free(p: u16) -> bool {
    (0..5).all(|i| {
        [p + i, p + i + 10_000]
            .iter()
            .all(|&q| std::net::TcpListener::bind(("127.0.0.1", q)).is_ok())
    })
}
