//! `holdfast daemon`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::render::outln;
use crate::alert::AlertConfig;
use crate::daemon::{schedule::RetryPolicy, Config};
use crate::error::{Error, Exit};

#[derive(Debug, Args)]
pub(crate) struct DaemonArgs {
    /// Plan files, or folders whose *.yaml / *.yml files are plans.
    #[arg(long, value_name = "DIR|FILE", required = true, num_args = 1..)]
    plans: Vec<PathBuf>,
    /// Address for /healthz, /metrics and /status.
    #[arg(long, default_value = "127.0.0.1:9187")]
    listen: SocketAddr,
    /// Jobs running at once, over all plans (one per plan at a time).
    #[arg(long, default_value_t = 2)]
    concurrency: usize,
    /// Run every due or never-run job once, then exit (non-zero if one failed).
    #[arg(long)]
    once: bool,
    /// Where the last run of each job is kept across restarts. Default:
    /// $STATE_DIRECTORY (systemd), else ~/.local/state/holdfast.
    #[arg(long, value_name = "DIR", env = "HOLDFAST_STATE_DIR")]
    state: Option<PathBuf>,
    /// After SIGTERM/SIGINT, how long running jobs may take before they are cancelled.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    grace: Duration,
    /// POST alerts here as JSON (Alertmanager's `/api/v2/alerts` body): a
    /// failed backup, verify or drill, RPO over the plan's `rpo_limit`,
    /// archiving stalled, lock coverage short; and a resolved message when
    /// each clears.
    #[arg(long, value_name = "URL", env = "HOLDFAST_ALERT_WEBHOOK")]
    alert_webhook: Option<url::Url>,
    /// Run this shell command for each alert: the JSON body on stdin, the
    /// alert in HOLDFAST_ALERT_* variables (docs/daemon.md).
    #[arg(long, value_name = "CMD")]
    alert_command: Option<String>,
    /// Send an alert again at most this often while its condition holds.
    #[arg(long, default_value = "4h", value_parser = humantime::parse_duration)]
    alert_repeat: Duration,
    /// How often PostgreSQL plans' WAL archiving is looked at.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    archive_poll: Duration,
    /// How long a WAL segment may wait with no archiving progress before
    /// archiving counts as stalled (and alerts).
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    archive_stall: Duration,
    /// Run every plan's restore drill once at start, after its first
    /// backup, whatever its schedule says.
    #[arg(long)]
    drill_on_start: bool,
}

pub(super) fn default_state_dir() -> Result<PathBuf, Error> {
    if let Some(d) = std::env::var_os("STATE_DIRECTORY") {
        // systemd may list several, colon-separated; the first is ours.
        let d = d.to_string_lossy();
        return Ok(PathBuf::from(d.split(':').next().unwrap_or_default()));
    }
    match std::env::var_os("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/state/holdfast")),
        None => Err(Error::usage(
            "no --state folder given, and neither STATE_DIRECTORY nor HOME is set",
        )),
    }
}

pub async fn run(args: DaemonArgs) -> Result<Exit, Error> {
    let state_dir = match args.state {
        Some(d) => d,
        None => default_state_dir()?,
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| Error::usage(format!("unable to listen on {}: {e}", args.listen)))?;
    let addr = listener.local_addr().unwrap_or(args.listen);
    outln!("holdfast daemon: status page on http://{addr}/, metrics on http://{addr}/metrics, JSON on http://{addr}/status; state in {}", state_dir.display())?;
    if args.alert_repeat.is_zero() {
        return Err(Error::usage("--alert-repeat must be longer than 0s"));
    }
    if args.archive_poll.is_zero() {
        return Err(Error::usage("--archive-poll must be longer than 0s"));
    }
    let alerts = AlertConfig {
        webhook: args.alert_webhook,
        command: args.alert_command.as_deref().map(AlertConfig::shell),
        repeat: args.alert_repeat,
    };
    if alerts.webhook.is_none() && alerts.command.is_none() {
        tracing::info!("no --alert-webhook or --alert-command: alerts are logged and shown on the status page only");
    }
    let once = args.once;
    let config = Config {
        concurrency: args.concurrency,
        once: args.once,
        grace: args.grace,
        retry: RetryPolicy::default(),
        state_dir: Some(state_dir),
        alerts,
        status_url: Some(format!("http://{addr}/")),
        archive_poll: args.archive_poll,
        archive_stall: args.archive_stall,
        drill_on_start: args.drill_on_start,
        ..Config::new(args.plans)
    };
    let summary = crate::daemon::run(config, listener).await?;
    match summary.failures.first() {
        Some((plan, job, exit)) if once => {
            tracing::error!(
                "{} job(s) failed, the first: {job} of plan {plan}",
                summary.failures.len()
            );
            Ok(*exit)
        }
        _ => Ok(Exit::Ok),
    }
}
