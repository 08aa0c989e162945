//! A webhook receiver of the test's own, where `--alert-webhook` points:
//! a plain HTTP/1.1 listener on a free port that answers 200 and keeps
//! every POSTed JSON body, in order of arrival.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;

pub struct Receiver {
    pub url: String,
    bodies: Arc<Mutex<Vec<Value>>>,
}

impl Receiver {
    pub fn start() -> Receiver {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/api/v2/alerts", listener.local_addr().unwrap());
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let out = bodies.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(mut conn) = conn else { return };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // Headers, then Content-Length bytes of body (counted in
                // bytes: alert texts are not all ASCII).
                let body = loop {
                    let Ok(n) = conn.read(&mut chunk) else {
                        break None;
                    };
                    if n == 0 {
                        break None;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    let rest = &buf[end + 4..];
                    let len: usize = head
                        .lines()
                        .find_map(|l| {
                            let (k, v) = l.split_once(':')?;
                            k.eq_ignore_ascii_case("content-length")
                                .then(|| v.trim().parse().ok())?
                        })
                        .unwrap_or(0);
                    if rest.len() >= len {
                        break Some(rest[..len].to_vec());
                    }
                };
                let _ = conn.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
                if let Some(b) = body.and_then(|b| serde_json::from_slice(&b).ok()) {
                    out.lock().unwrap().push(b);
                }
            }
        });
        Receiver { url, bodies }
    }

    /// Every body received so far, in order.
    pub fn bodies(&self) -> Vec<Value> {
        self.bodies.lock().unwrap().clone()
    }

    /// Every alert received: (alertname, plan, status, summary).
    pub fn alerts(&self) -> Vec<(String, String, String, String)> {
        self.received()
            .iter()
            .map(|a| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&a["labels"]["alertname"]),
                    s(&a["labels"]["plan"]),
                    s(&a["annotations"]["status"]),
                    s(&a["annotations"]["summary"]),
                )
            })
            .collect()
    }

    /// Every alert object received (the bodies are lists of them), in order.
    pub fn received(&self) -> Vec<Value> {
        self.bodies
            .lock()
            .unwrap()
            .iter()
            .flat_map(|b| b.as_array().cloned().unwrap_or_default())
            .collect()
    }

    pub fn count(&self, name: &str, plan: &str, status: &str) -> usize {
        self.alerts()
            .iter()
            .filter(|a| a.0 == name && a.1 == plan && a.2 == status)
            .count()
    }
}
