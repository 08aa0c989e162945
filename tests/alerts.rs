//! Alerts as an on-call receiver sees them: a real HTTP server on
//! 127.0.0.1:0 receives the firing alert (after refusing the first attempt
//! with a 503, so the retry is exercised), nothing while it is suppressed,
//! and the resolved message when it clears; a shell command gets the same
//! alert on stdin and in `HOLDFAST_ALERT_*` variables.

use std::time::Duration;

use holdfast::alert::{AlertConfig, AlertKind, Alerter, Condition, Notice};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// One request the test server received.
#[derive(Debug)]
struct Received {
    method: String,
    path: String,
    content_type: String,
    body: serde_json::Value,
}

/// A minimal HTTP/1.1 server answering each request with the next status in
/// `statuses` (200 once they run out), one request per connection.
async fn server(statuses: Vec<u16>) -> (String, mpsc::UnboundedReceiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut statuses = statuses.into_iter();
        loop {
            let (mut sock, _) = listener.accept().await.unwrap();
            let mut buf = Vec::new();
            let mut chunk = [0u8; 4096];
            let header_end = loop {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed before the headers ended");
                buf.extend_from_slice(&chunk[..n]);
                if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                    break i + 4;
                }
            };
            let head = String::from_utf8_lossy(&buf[..header_end]).into_owned();
            let header = |name: &str| {
                head.lines()
                    .find_map(|l| {
                        let (k, v) = l.split_once(':')?;
                        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
                    })
                    .unwrap_or_default()
            };
            let len: usize = header("content-length").parse().unwrap();
            while buf.len() < header_end + len {
                let n = sock.read(&mut chunk).await.unwrap();
                assert!(n > 0, "connection closed inside the body");
                buf.extend_from_slice(&chunk[..n]);
            }
            let mut first = head.lines().next().unwrap().split(' ');
            let received = Received {
                method: first.next().unwrap().to_string(),
                path: first.next().unwrap().to_string(),
                content_type: header("content-type"),
                body: serde_json::from_slice(&buf[header_end..header_end + len]).unwrap(),
            };
            let status = statuses.next().unwrap_or(200);
            let answer =
                format!("HTTP/1.1 {status} X\r\ncontent-length: 2\r\nconnection: close\r\n\r\nno");
            sock.write_all(answer.as_bytes()).await.unwrap();
            let _ = sock.shutdown().await;
            tx.send(received).unwrap();
        }
    });
    (format!("http://{addr}/api/v2/alerts"), rx)
}

fn backup_failed(firing: bool) -> Condition {
    Condition {
        plan: "app".into(),
        kind: AlertKind::BackupFailed,
        firing,
        summary: "backup of plan app failed".into(),
        details: "unable to read /srv/app.db: Permission denied".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_gets_the_firing_alert_once_and_the_resolved_one_when_it_clears() {
    let dir = tempfile::tempdir().unwrap();
    let stdin_log = dir.path().join("stdin.jsonl");
    let env_log = dir.path().join("env.log");
    let (url, mut received) = server(vec![503]).await;
    let alerter = Alerter::new(AlertConfig {
        webhook: Some(url.parse().unwrap()),
        command: Some(AlertConfig::shell(&format!(
            "cat >> {stdin}; echo >> {stdin}; echo \"$HOLDFAST_ALERT_STATUS $HOLDFAST_ALERT_PLAN $HOLDFAST_ALERT_KIND $HOLDFAST_ALERT_SEVERITY $HOLDFAST_ALERT_SUMMARY\" >> {env}",
            stdin = stdin_log.display(),
            env = env_log.display()
        ))),
        repeat: Duration::from_secs(3600),
    });

    let (notice, delivery) = alerter.update(&backup_failed(true)).await;
    assert_eq!(notice, Notice::Firing);
    assert!(delivery.ok(), "{delivery:?}");
    assert_eq!(delivery.webhook, Some(Ok(200)));
    // The 503 was retried: two requests, the same alert.
    let refused = received.recv().await.unwrap();
    let firing = received.recv().await.unwrap();
    assert_eq!(refused.body, firing.body);
    assert_eq!(firing.method, "POST");
    assert_eq!(firing.path, "/api/v2/alerts");
    assert_eq!(firing.content_type, "application/json");
    let alerts = firing.body.as_array().expect("a list of alerts");
    assert_eq!(alerts.len(), 1);
    let a = &alerts[0];
    assert_eq!(a["labels"]["alertname"], "HoldfastBackupFailed");
    assert_eq!(a["labels"]["plan"], "app");
    assert_eq!(a["labels"]["severity"], "critical");
    assert_eq!(a["annotations"]["summary"], "backup of plan app failed");
    assert_eq!(
        a["annotations"]["description"],
        "unable to read /srv/app.db: Permission denied"
    );
    let starts: chrono::DateTime<chrono::Utc> = a["startsAt"].as_str().unwrap().parse().unwrap();
    let ends: chrono::DateTime<chrono::Utc> = a["endsAt"].as_str().unwrap().parse().unwrap();
    assert!(ends > chrono::Utc::now(), "open while firing: {a}");

    // Still failing, well inside the repeat interval: nothing is sent.
    let (notice, delivery) = alerter.update(&backup_failed(true)).await;
    assert_eq!(notice, Notice::Suppressed);
    assert!(delivery.webhook.is_none() && delivery.command.is_none());
    assert!(received.try_recv().is_err(), "a suppressed alert was sent");

    let (notice, delivery) = alerter.update(&backup_failed(false)).await;
    assert_eq!(notice, Notice::Resolved);
    assert!(delivery.ok(), "{delivery:?}");
    let resolved = received.recv().await.unwrap();
    let r = &resolved.body[0];
    assert_eq!(r["labels"], a["labels"], "the same alert, resolved");
    assert_eq!(r["startsAt"], a["startsAt"]);
    let ended: chrono::DateTime<chrono::Utc> = r["endsAt"].as_str().unwrap().parse().unwrap();
    assert!(ended >= starts && ended <= chrono::Utc::now(), "{r}");
    assert_eq!(r["annotations"]["status"], "resolved");

    // The command ran twice, with the JSON on stdin and the variables set.
    let env = std::fs::read_to_string(&env_log).unwrap();
    assert_eq!(
        env.lines().collect::<Vec<_>>(),
        [
            "firing app backup_failed critical backup of plan app failed",
            "resolved app backup_failed critical backup of plan app failed",
        ]
    );
    let stdin = std::fs::read_to_string(&stdin_log).unwrap();
    let bodies: Vec<serde_json::Value> = stdin
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(bodies.len(), 2, "{stdin}");
    assert_eq!(bodies[0][0]["labels"], a["labels"]);
    assert_eq!(bodies[1][0]["annotations"]["status"], "resolved");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_is_not_retried_and_a_failing_command_is_reported() {
    let (url, mut received) = server(vec![400]).await;
    let alerter = Alerter::new(AlertConfig {
        webhook: Some(url.parse().unwrap()),
        command: Some(AlertConfig::shell("echo pager offline >&2; exit 3")),
        repeat: Duration::from_secs(60),
    });
    let (notice, delivery) = alerter.update(&backup_failed(true)).await;
    assert_eq!(notice, Notice::Firing);
    let err = delivery.webhook.clone().unwrap().unwrap_err();
    assert!(
        err.contains("400") && err.contains("/api/v2/alerts"),
        "{err}"
    );
    let err = delivery.command.clone().unwrap().unwrap_err();
    assert!(
        err.contains("exit status: 3") && err.contains("pager offline"),
        "{err}"
    );
    received.recv().await.unwrap();
    assert!(received.try_recv().is_err(), "a 4xx was retried");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_over_its_deadline_is_killed_and_a_silent_webhook_times_out() {
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("pid");
    // A receiver that accepts connections and never answers.
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (sock, _) = listener.accept().await.unwrap();
            held.push(sock);
        }
    });
    let alerter = Alerter::new(AlertConfig {
        webhook: Some(url.parse().unwrap()),
        // `exec`, so the recorded pid is the process the deadline must kill.
        command: Some(AlertConfig::shell(&format!(
            "echo $$ > {}; exec sleep 600",
            pid_file.display()
        ))),
        repeat: Duration::from_secs(60),
    })
    .with_deadlines(Duration::from_millis(300), Duration::from_secs(1));
    let (_, delivery) = alerter.update(&backup_failed(true)).await;
    let err = delivery.command.clone().unwrap().unwrap_err();
    assert!(err.contains("was killed"), "{err}");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let proc_dir = format!("/proc/{}", pid.trim());
    // Killed, then reaped by tokio's orphan reaper: gone or a zombie.
    let gone = (0..100).any(|_| {
        let state = std::fs::read_to_string(format!("{proc_dir}/stat")).unwrap_or_default();
        let alive = !state.is_empty() && !state.contains(") Z ");
        if alive {
            std::thread::sleep(Duration::from_millis(50));
        }
        !alive
    });
    assert!(gone, "the alert command (pid {pid}) still runs");
    let err = delivery.webhook.clone().unwrap().unwrap_err();
    assert!(
        err.contains("no answer within") && err.contains("attempt 3 of 3"),
        "{err}"
    );
}
