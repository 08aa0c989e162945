//! The alerter: turns the daemon's condition updates ("plan app: backup
//! failed", "… and now it is fine again") into notifications, sent to a
//! webhook and/or a command, once when a condition starts, again at most
//! once per `repeat` while it holds, and once more when it clears.
//!
//! The webhook body is Alertmanager's (`POST /api/v2/alerts`): a JSON list
//! of alerts with `labels` (`alertname`, `plan`, `severity`, `kind`),
//! `annotations` (`summary`, `description`, `status`), `startsAt`, and
//! `endsAt`. Pointing `--alert-webhook` at an Alertmanager works as is; any
//! other receiver reads the same JSON. A firing alert's `endsAt` lies two
//! repeat intervals ahead, so Alertmanager keeps it open between repeats and
//! closes it by itself if the daemon dies (rather than after its default
//! five minutes); the resolved message sets `endsAt` to the time it cleared.
//!
//! The command gets the same JSON on stdin and the alert in `HOLDFAST_ALERT_*`
//! variables (see [`Alerter::update`]). Both run with a deadline; the
//! webhook is retried on connection failures, timeouts and 5xx, never on
//! 4xx (a receiver refusing the body will refuse it again). A failed
//! delivery is logged and reported, never fatal: alerting must not stop
//! backups.

use std::collections::HashMap;
use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::time::Instant;
use url::Url;

/// Where alerts go, and how often a condition that holds is repeated.
/// Daemon-level options: `--alert-webhook URL`, `--alert-command CMD`,
/// `--alert-repeat DURATION`.
#[derive(Debug, Clone)]
pub struct AlertConfig {
    pub webhook: Option<Url>,
    /// Program and arguments, run without a shell ([`AlertConfig::shell`]
    /// wraps a shell command line).
    pub command: Option<Vec<String>>,
    pub repeat: Duration,
}

/// How often a condition that holds is sent again, unless `--alert-repeat` says.
pub const DEFAULT_REPEAT: Duration = Duration::from_secs(4 * 3600);

impl Default for AlertConfig {
    /// Nowhere to send: conditions are still tracked, logged and shown on
    /// `/status` and the status page.
    fn default() -> Self {
        AlertConfig {
            webhook: None,
            command: None,
            repeat: DEFAULT_REPEAT,
        }
    }
}

impl AlertConfig {
    /// `--alert-command 'CMD …'` as `/bin/sh -c 'CMD …'`.
    pub fn shell(command_line: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), command_line.into()]
    }
}

/// How long one webhook attempt may take, connection included.
pub const WEBHOOK_DEADLINE: Duration = Duration::from_secs(10);
/// Webhook attempts per notification.
pub const WEBHOOK_ATTEMPTS: u32 = 3;
/// Wait before the second attempt; doubled before each later one.
pub const WEBHOOK_BACKOFF: Duration = Duration::from_millis(500);
/// How long the alert command may run before it is killed.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(30);

/// The conditions the daemon raises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum AlertKind {
    BackupFailed,
    DrillFailed,
    VerifyFailed,
    RpoExceeded,
    ArchiveStalled,
    LockCoverageShort,
    BinlogGap,
}

impl AlertKind {
    pub const ALL: [AlertKind; 7] = [
        AlertKind::BackupFailed,
        AlertKind::DrillFailed,
        AlertKind::VerifyFailed,
        AlertKind::RpoExceeded,
        AlertKind::ArchiveStalled,
        AlertKind::LockCoverageShort,
        AlertKind::BinlogGap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AlertKind::BackupFailed => "backup_failed",
            AlertKind::DrillFailed => "drill_failed",
            AlertKind::VerifyFailed => "verify_failed",
            AlertKind::RpoExceeded => "rpo_exceeded",
            AlertKind::ArchiveStalled => "archive_stalled",
            AlertKind::LockCoverageShort => "lock_coverage_short",
            AlertKind::BinlogGap => "binlog_gap",
        }
    }

    /// The Alertmanager `alertname`, as the shipped Prometheus rules name
    /// the same conditions.
    pub fn alertname(self) -> &'static str {
        match self {
            AlertKind::BackupFailed => "HoldfastBackupFailed",
            AlertKind::DrillFailed => "HoldfastDrillFailed",
            AlertKind::VerifyFailed => "HoldfastVerifyFailed",
            AlertKind::RpoExceeded => "HoldfastRpoExceeded",
            AlertKind::ArchiveStalled => "HoldfastArchiveStalled",
            AlertKind::LockCoverageShort => "HoldfastLockCoverageShort",
            AlertKind::BinlogGap => "HoldfastBinlogGap",
        }
    }

    /// A failed drill says a restore may be slow or incomplete; everything
    /// else says restores are, or will soon be, at risk.
    pub fn severity(self) -> &'static str {
        match self {
            AlertKind::DrillFailed => "warning",
            _ => "critical",
        }
    }
}

impl fmt::Display for AlertKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One condition update from the daemon.
#[derive(Debug, Clone)]
pub struct Condition {
    pub plan: String,
    pub kind: AlertKind,
    pub firing: bool,
    /// One line: `backup of plan app failed`.
    pub summary: String,
    /// The error or figures behind it.
    pub details: String,
}

/// What an update led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Notice {
    /// A new condition: sent.
    Firing,
    /// Still holding, and `repeat` has passed since the last send: sent again.
    Repeat,
    /// Still holding, repeated recently: nothing sent.
    Suppressed,
    /// Cleared: the resolved message sent.
    Resolved,
    /// Not firing and was not: nothing to say.
    Quiet,
}

/// One alert in Alertmanager's `POST /api/v2/alerts` shape.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AlertBody {
    pub labels: std::collections::BTreeMap<String, String>,
    pub annotations: std::collections::BTreeMap<String, String>,
    #[serde(rename = "startsAt")]
    pub starts_at: DateTime<Utc>,
    #[serde(rename = "endsAt", skip_serializing_if = "Option::is_none")]
    pub ends_at: Option<DateTime<Utc>>,
    #[serde(rename = "generatorURL", skip_serializing_if = "String::is_empty")]
    pub generator_url: String,
}

/// How a notification went, per target.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Delivery {
    /// `None`: no webhook configured; `Some(Ok(status))` or the failure.
    pub webhook: Option<Result<u16, String>>,
    pub command: Option<Result<(), String>>,
}

impl Delivery {
    pub fn ok(&self) -> bool {
        !matches!(self.webhook, Some(Err(_))) && !matches!(self.command, Some(Err(_)))
    }
}

#[derive(Debug, Clone)]
struct Open {
    starts_at: DateTime<Utc>,
    last_sent: Instant,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Full<Bytes>>;

/// Holds which conditions are open and sends what [`Alerter::update`] decides.
pub struct Alerter {
    config: AlertConfig,
    open: Mutex<HashMap<(String, AlertKind), Open>>,
    client: HttpsClient,
    /// Where the status page lives, for `generatorURL`.
    generator_url: String,
    webhook_deadline: Duration,
    command_deadline: Duration,
}

impl fmt::Debug for Alerter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Alerter")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Alerter {
    pub fn new(config: AlertConfig) -> Self {
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let builder = hyper_rustls::HttpsConnectorBuilder::new();
        let builder = match builder.with_provider_and_native_roots(provider.clone()) {
            Ok(b) => b,
            Err(e) => {
                // No CA certificates on this host: plain-HTTP webhooks still
                // work, HTTPS ones fail at the handshake and say so.
                if config
                    .webhook
                    .as_ref()
                    .is_some_and(|u| u.scheme() == "https")
                {
                    tracing::warn!("no trusted CA certificates found ({e}); the HTTPS alert webhook will fail: install ca-certificates");
                }
                let tls = rustls::ClientConfig::builder_with_provider(provider)
                    .with_safe_default_protocol_versions()
                    .expect("ring supports the default TLS versions")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth();
                hyper_rustls::HttpsConnectorBuilder::new().with_tls_config(tls)
            }
        };
        let connector = builder.https_or_http().enable_http1().build();
        let client = Client::builder(TokioExecutor::new()).build(connector);
        Alerter {
            config,
            open: Mutex::new(HashMap::new()),
            client,
            generator_url: String::new(),
            webhook_deadline: WEBHOOK_DEADLINE,
            command_deadline: COMMAND_DEADLINE,
        }
    }

    /// Other deadlines than [`WEBHOOK_DEADLINE`] and [`COMMAND_DEADLINE`].
    pub fn with_deadlines(mut self, webhook: Duration, command: Duration) -> Self {
        self.webhook_deadline = webhook;
        self.command_deadline = command;
        self
    }

    /// Links alerts to the daemon's status page (`http://host:port/`).
    pub fn with_generator_url(mut self, url: impl Into<String>) -> Self {
        self.generator_url = url.into();
        self
    }

    pub fn config(&self) -> &AlertConfig {
        &self.config
    }

    /// The conditions firing now, as `(plan, kind, since)`.
    pub fn firing(&self) -> Vec<(String, AlertKind, DateTime<Utc>)> {
        let open = self.open.lock().expect("alert state lock");
        let mut v: Vec<_> = open
            .iter()
            .map(|((p, k), o)| (p.clone(), *k, o.starts_at))
            .collect();
        v.sort();
        v
    }

    /// Decides what a condition update means (see [`Notice`]) and records it.
    /// Repeats are timed on tokio's clock, so tests run it paused.
    pub fn decide(&self, plan: &str, kind: AlertKind, firing: bool) -> (Notice, DateTime<Utc>) {
        let mut open = self.open.lock().expect("alert state lock");
        let key = (plan.to_string(), kind);
        let now = Instant::now();
        match (firing, open.get_mut(&key)) {
            (true, None) => {
                let starts_at = crate::clock::now();
                open.insert(
                    key,
                    Open {
                        starts_at,
                        last_sent: now,
                    },
                );
                (Notice::Firing, starts_at)
            }
            (true, Some(o)) if now.duration_since(o.last_sent) >= self.config.repeat => {
                o.last_sent = now;
                (Notice::Repeat, o.starts_at)
            }
            (true, Some(o)) => (Notice::Suppressed, o.starts_at),
            (false, Some(_)) => {
                let o = open.remove(&key).expect("present");
                (Notice::Resolved, o.starts_at)
            }
            (false, None) => (Notice::Quiet, crate::clock::now()),
        }
    }

    /// Takes a condition update and sends what it calls for.
    ///
    /// The command sees `HOLDFAST_ALERT_STATUS` (`firing`/`resolved`),
    /// `_NAME`, `_KIND`, `_PLAN`, `_SEVERITY`, `_SUMMARY`, `_DESCRIPTION`,
    /// `_STARTS_AT`, and `_ENDS_AT` when resolved; stdin is the webhook body.
    pub async fn update(&self, c: &Condition) -> (Notice, Delivery) {
        let (notice, starts_at) = self.decide(&c.plan, c.kind, c.firing);
        (notice, self.notify(c, notice, starts_at).await)
    }

    /// Sends what [`Alerter::decide`] decided (nothing for `Suppressed` and
    /// `Quiet`). The daemon decides on its loop, in order, and sends from a
    /// task of its own, so a slow receiver never holds up the schedule.
    pub async fn notify(
        &self,
        c: &Condition,
        notice: Notice,
        starts_at: DateTime<Utc>,
    ) -> Delivery {
        let resolved = match notice {
            Notice::Firing | Notice::Repeat => false,
            Notice::Resolved => true,
            Notice::Suppressed | Notice::Quiet => return Delivery::default(),
        };
        let body = self.body(c, starts_at, resolved);
        tracing::info!(plan = %c.plan, alert = %c.kind, notice = ?notice, "alert: {}", c.summary);
        self.deliver(&body).await
    }

    /// The Alertmanager body for one condition.
    pub fn body(&self, c: &Condition, starts_at: DateTime<Utc>, resolved: bool) -> AlertBody {
        let now = crate::clock::now();
        let labels = [
            ("alertname", c.kind.alertname()),
            ("kind", c.kind.as_str()),
            ("plan", c.plan.as_str()),
            ("severity", c.kind.severity()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let annotations = [
            ("summary", c.summary.as_str()),
            ("description", c.details.as_str()),
            ("status", if resolved { "resolved" } else { "firing" }),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let ends_at = if resolved {
            now
        } else {
            now + chrono::Duration::from_std(self.config.repeat * 2)
                .unwrap_or(chrono::Duration::days(1))
        };
        AlertBody {
            labels,
            annotations,
            starts_at,
            ends_at: Some(ends_at),
            generator_url: self.generator_url.clone(),
        }
    }

    /// Sends one alert to every configured target, both at once.
    pub async fn deliver(&self, alert: &AlertBody) -> Delivery {
        let json = serde_json::to_vec(&[alert]).expect("alert serialises");
        let webhook = async {
            match &self.config.webhook {
                Some(url) => Some(self.post(url, &json).await),
                None => None,
            }
        };
        let command = async {
            match &self.config.command {
                Some(argv) => Some(run_command(argv, alert, &json, self.command_deadline).await),
                None => None,
            }
        };
        let (webhook, command) = tokio::join!(webhook, command);
        if let Some(Err(e)) = &webhook {
            tracing::warn!(alert = %alert.labels["kind"], plan = %alert.labels["plan"], "alert webhook failed: {e}");
        }
        if let Some(Err(e)) = &command {
            tracing::warn!(alert = %alert.labels["kind"], plan = %alert.labels["plan"], "alert command failed: {e}");
        }
        Delivery { webhook, command }
    }

    /// POSTs `json`, retrying what a later attempt may fix.
    async fn post(&self, url: &Url, json: &[u8]) -> Result<u16, String> {
        let shown = redact(url);
        let mut wait = WEBHOOK_BACKOFF;
        let mut last = String::new();
        for attempt in 1..=WEBHOOK_ATTEMPTS {
            if attempt > 1 {
                tokio::time::sleep(wait).await;
                wait *= 2;
            }
            let request = hyper::Request::post(url.as_str())
                .header(hyper::header::CONTENT_TYPE, "application/json")
                .header(
                    hyper::header::USER_AGENT,
                    concat!("holdfast/", env!("CARGO_PKG_VERSION")),
                )
                .body(Full::new(Bytes::copy_from_slice(json)))
                .map_err(|e| format!("unable to build a request to {shown}: {e}"))?;
            let sent = tokio::time::timeout(self.webhook_deadline, async {
                let response = self.client.request(request).await?;
                let status = response.status();
                // Read the (small) answer so the connection can be reused.
                let body = response.into_body().collect().await?.to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
            })
            .await;
            match sent {
                Err(_) => {
                    last = format!(
                    "POST {shown}: no answer within {:?} (attempt {attempt} of {WEBHOOK_ATTEMPTS})",
                    self.webhook_deadline
                )
                }
                Ok(Err(e)) => {
                    last = format!("POST {shown}: {e} (attempt {attempt} of {WEBHOOK_ATTEMPTS})")
                }
                Ok(Ok((status, _))) if status.is_success() => return Ok(status.as_u16()),
                Ok(Ok((status, body))) => {
                    let text = String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned();
                    let msg = format!("POST {shown} answered {status}: {text}");
                    if status.is_client_error() {
                        return Err(msg);
                    }
                    last = format!("{msg} (attempt {attempt} of {WEBHOOK_ATTEMPTS})");
                }
            }
        }
        Err(last)
    }
}

/// A URL for messages: no password, no query (tokens often live there).
fn redact(url: &Url) -> String {
    let mut u = url.clone();
    let _ = u.set_password(None);
    u.set_query(None);
    u.to_string()
}

async fn run_command(
    argv: &[String],
    alert: &AlertBody,
    json: &[u8],
    deadline: Duration,
) -> Result<(), String> {
    let Some((program, args)) = argv.split_first() else {
        return Err("the alert command is empty".into());
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let resolved = alert.annotations.get("status").map(String::as_str) == Some("resolved");
    cmd.env(
        "HOLDFAST_ALERT_STATUS",
        if resolved { "resolved" } else { "firing" },
    );
    for (var, label) in [
        ("HOLDFAST_ALERT_NAME", "alertname"),
        ("HOLDFAST_ALERT_KIND", "kind"),
        ("HOLDFAST_ALERT_PLAN", "plan"),
        ("HOLDFAST_ALERT_SEVERITY", "severity"),
    ] {
        cmd.env(var, &alert.labels[label]);
    }
    for (var, ann) in [
        ("HOLDFAST_ALERT_SUMMARY", "summary"),
        ("HOLDFAST_ALERT_DESCRIPTION", "description"),
    ] {
        cmd.env(var, &alert.annotations[ann]);
    }
    cmd.env("HOLDFAST_ALERT_STARTS_AT", alert.starts_at.to_rfc3339());
    if resolved {
        if let Some(end) = alert.ends_at {
            cmd.env("HOLDFAST_ALERT_ENDS_AT", end.to_rfc3339());
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("unable to start alert command {program}: {e}"))?;
    let mut stdin = child.stdin.take().expect("stdin piped");
    let json = json.to_vec();
    let run = async move {
        // A command that does not read stdin must not block us on a full pipe.
        let feed = async move {
            let _ = stdin.write_all(&json).await;
            drop(stdin);
        };
        let (_, out) = tokio::join!(feed, child.wait_with_output());
        out
    };
    match tokio::time::timeout(deadline, run).await {
        // Dropping the future drops the child: kill_on_drop kills it.
        Err(_) => Err(format!(
            "alert command {program} did not finish within {deadline:?} and was killed"
        )),
        Ok(Err(e)) => Err(format!("unable to wait for alert command {program}: {e}")),
        Ok(Ok(out)) if out.status.success() => Ok(()),
        Ok(Ok(out)) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            Err(format!(
                "alert command {program} exited with {}: {}",
                out.status,
                stderr.trim().chars().take(300).collect::<String>()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alerter(repeat_secs: u64) -> Alerter {
        Alerter::new(AlertConfig {
            webhook: None,
            command: None,
            repeat: Duration::from_secs(repeat_secs),
        })
    }

    fn cond(plan: &str, kind: AlertKind, firing: bool) -> Condition {
        Condition {
            plan: plan.into(),
            kind,
            firing,
            summary: format!("{kind} on {plan}"),
            details: String::new(),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_condition_repeats_at_most_once_per_interval_and_resolves_once() {
        let a = alerter(3600);
        let up = |firing| cond("app", AlertKind::BackupFailed, firing);
        assert_eq!(a.update(&up(true)).await.0, Notice::Firing);
        assert_eq!(a.update(&up(true)).await.0, Notice::Suppressed);
        tokio::time::advance(Duration::from_secs(3599)).await;
        assert_eq!(a.update(&up(true)).await.0, Notice::Suppressed);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(a.update(&up(true)).await.0, Notice::Repeat);
        // Repeats are counted from the last send, not from the start.
        tokio::time::advance(Duration::from_secs(1800)).await;
        assert_eq!(a.update(&up(true)).await.0, Notice::Suppressed);
        tokio::time::advance(Duration::from_secs(1800)).await;
        assert_eq!(a.update(&up(true)).await.0, Notice::Repeat);
        assert_eq!(a.firing().len(), 1);
        assert_eq!(a.update(&up(false)).await.0, Notice::Resolved);
        assert_eq!(a.update(&up(false)).await.0, Notice::Quiet);
        assert!(a.firing().is_empty());
        // Firing again after it cleared is a new alert, sent at once.
        assert_eq!(a.update(&up(true)).await.0, Notice::Firing);
    }

    #[tokio::test(start_paused = true)]
    async fn conditions_of_other_plans_and_kinds_are_independent() {
        let a = alerter(60);
        assert_eq!(
            a.update(&cond("app", AlertKind::BackupFailed, true))
                .await
                .0,
            Notice::Firing
        );
        assert_eq!(
            a.update(&cond("db", AlertKind::BackupFailed, true)).await.0,
            Notice::Firing
        );
        assert_eq!(
            a.update(&cond("app", AlertKind::ArchiveStalled, true))
                .await
                .0,
            Notice::Firing
        );
        assert_eq!(
            a.update(&cond("db", AlertKind::BackupFailed, false))
                .await
                .0,
            Notice::Resolved
        );
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(
            a.update(&cond("app", AlertKind::BackupFailed, true))
                .await
                .0,
            Notice::Repeat
        );
        let firing: Vec<_> = a.firing().into_iter().map(|(p, k, _)| (p, k)).collect();
        assert_eq!(
            firing,
            [
                ("app".to_string(), AlertKind::BackupFailed),
                ("app".to_string(), AlertKind::ArchiveStalled)
            ]
        );
    }

    #[test]
    fn the_body_is_alertmanagers_and_a_resolved_one_ends_now() {
        let a = alerter(600);
        let c = Condition {
            plan: "app".into(),
            kind: AlertKind::RpoExceeded,
            firing: true,
            summary: "RPO of plan app is 2h, over its 15m limit".into(),
            details: "newest archived commit 2026-01-05T08:00:00Z".into(),
        };
        let start = crate::clock::now();
        let firing = a.body(&c, start, false);
        let v = serde_json::to_value([&firing]).unwrap();
        assert_eq!(v[0]["labels"]["alertname"], "HoldfastRpoExceeded");
        assert_eq!(v[0]["labels"]["plan"], "app");
        assert_eq!(v[0]["labels"]["severity"], "critical");
        assert_eq!(v[0]["annotations"]["summary"], c.summary);
        assert_eq!(v[0]["annotations"]["description"], c.details);
        // Kept open two repeats ahead while firing.
        assert!(firing.ends_at.unwrap() > start + chrono::Duration::seconds(1199));
        let resolved = a.body(&c, start, true);
        assert!(resolved.ends_at.unwrap() <= crate::clock::now());
        assert_eq!(resolved.annotations["status"], "resolved");
    }

    #[test]
    fn a_webhook_url_is_shown_without_its_secrets() {
        let u: Url = "https://user:hunter2@hooks.example/path?token=abc"
            .parse()
            .unwrap();
        assert_eq!(redact(&u), "https://user@hooks.example/path");
    }
}
