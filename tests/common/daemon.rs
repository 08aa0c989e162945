//! `holdfast daemon` as a process of the test's own: started on a free
//! port, asked over plain HTTP/1.1, waited on with deadlines, signalled,
//! killed when dropped. (The alert webhook of the test's own is `webhook::Receiver`.)

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::bin::command;
use super::free_port;

pub struct Daemon {
    pub child: Child,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    /// `holdfast daemon --plans plans --state state`, once `/healthz` answers.
    pub fn start(plans: &Path, state: &Path, extra: &[&str]) -> Daemon {
        let port = free_port();
        let log = state.with_extension(format!("{port}.log"));
        let mut c = command();
        c.env("HOLDFAST_LOG", "info")
            .args(["daemon", "--plans"])
            .arg(plans)
            .arg("--state")
            .arg(state)
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let d = Daemon {
            child: c.spawn().expect("holdfast daemon starts"),
            port,
            log,
        };
        d.wait_for("/healthz answering", |d| {
            d.get("/healthz").is_some_and(|b| b == "ok\n")
        });
        // The plans are loaded once the scheduler has published a status
        // (it carries `now`); before that /status lists no plan.
        d.wait_for("the first /status", |d| {
            d.get("/status")
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|v| v["now"].is_string())
        });
        d
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// The head and body of a GET, whatever its status.
    pub fn request(&self, path: &str) -> Option<(String, String)> {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        Some((head.to_string(), body.to_string()))
    }

    /// The body of a GET answered 200.
    pub fn get(&self, path: &str) -> Option<String> {
        let (head, body) = self.request(path)?;
        head.starts_with("HTTP/1.1 200").then_some(body)
    }

    pub fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status").expect("/status answers")).unwrap()
    }

    /// Plan `name`'s object in /status.
    pub fn plan(&self, name: &str) -> Value {
        let st = self.status();
        st["plans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["plan"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no plan {name} in {st}"))
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The value of one series in /metrics, e.g. `holdfast_snapshots{plan="app"}`.
    pub fn metric(&self, series: &str) -> Option<f64> {
        let text = self.get("/metrics")?;
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    /// Sends `sig` (`-HUP`, `-TERM`, …) with kill(1).
    pub fn signal(&self, sig: &str) {
        let st = std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits (90 s at most) for the process to end; its exit status.
    pub fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Polls `cond` until it holds; fails the test, with the daemon's log,
    /// after 90 s.
    pub fn wait_for(&self, what: &str, mut cond: impl FnMut(&Daemon) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(90);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "gave up waiting for {what}; daemon log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
