//! Turning a restored base backup into a recovering server: the recovery
//! settings and `recovery.signal` holdfast writes, and starting the server
//! (`--start`), waiting — with a deadline — until it has replayed to the
//! target and promoted, and reading from its log what it did.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::Utc;
use tokio::process::Command;

use super::client::{pg_bin_for, pg_program};
use super::meta::BaseBackup;
use super::pitr::{CopyRole, PgTarget, PitrOptions, SPOOL_DIR};
use super::PgError;
use crate::engine::process;
use crate::engine::scratch::{Address, ScratchServer};
use crate::repository::confine::Confined;
use crate::repository::materialize::absolute;
use rustix::fs::OFlags;

/// How long `pg_ctl` and one `psql` poll may take.
const PG_CTL_DEADLINE: Duration = Duration::from_secs(120);
const POLL_DEADLINE: Duration = Duration::from_secs(10);

/// `recovery.signal`, the recovery settings, the WAL spool, and the folders
/// a base backup leaves out. `timeline` is the one the restore checked the
/// WAL of, pinned instead of `latest`: PostgreSQL would otherwise follow any
/// `N.history` in the archive, planted ones included.
/// `role` decides the block that stays: a scratch copy gets `archive_mode =
/// off` outside the recovery block, which the runbook says to delete once
/// the server has promoted.
pub fn prepare_recovery(
    dir: &Path,
    spool: &Path,
    opts: &PitrOptions,
    base: &BaseBackup,
    timeline: u32,
    role: (CopyRole, &str),
) -> std::io::Result<()> {
    // The data directory came from a manifest: nothing here follows a
    // symlink it may have planted (`pg_wal`, `postgresql.auto.conf`, …).
    let data = Confined::open(dir)?;
    for sub in ["pg_wal", "pg_wal/archive_status"] {
        data.create_dir(sub)?;
    }
    data.set_dir_meta(".", 0o700, None)?;
    let spool_in = dir.join(SPOOL_DIR);
    data.rename_into(spool, SPOOL_DIR)?;
    let exe = std::env::current_exe()?;
    let plan = absolute(&opts.plan_file);
    for p in [&exe, &plan, &spool_in] {
        if p.to_string_lossy().contains(['\'', '"']) {
            return Err(std::io::Error::other(format!(
                "{} contains a quote, which cannot go into restore_command",
                p.display()
            )));
        }
    }
    let now = Utc::now().to_rfc3339();
    let mut conf = format!(
        "\n# BEGIN holdfast recovery, added by holdfast restore at {now}: point-in-time\n# recovery to {target} from base backup {id}. PostgreSQL reads these only\n# during recovery: delete from BEGIN to END once the server has promoted.\nrestore_command = '\"{exe}\" wal-fetch --plan \"{plan}\" --spool \"{spool}\" %f %p'\nrecovery_target_timeline = '{timeline}'\nrecovery_target_action = 'promote'\n",
        target = opts.target,
        id = base.snapshot.id,
        exe = exe.display(),
        plan = plan.display(),
        spool = spool_in.display(),
    );
    match opts.target {
        PgTarget::Time(t) => conf.push_str(&format!(
            "recovery_target_time = '{}'\n",
            t.format("%Y-%m-%d %H:%M:%S%.6f+00")
        )),
        PgTarget::Lsn(l) => conf.push_str(&format!("recovery_target_lsn = '{l}'\n")),
        PgTarget::Immediate => conf.push_str("recovery_target = 'immediate'\n"),
        PgTarget::Latest => {}
    }
    conf.push_str("# END holdfast recovery\n");
    // What stays after recovery: the copy's port, and for a scratch copy
    // the setting that keeps it out of the plan's archive.
    let (role, why) = role;
    match role {
        CopyRole::Scratch => conf.push_str(&format!(
            "\n# holdfast restore at {now}: a SCRATCH COPY ({why}).\n# It must never archive into the plan (its own timeline would become the one\n# every later restore follows): keep this line. docs/runbook.md, section 10.\narchive_mode = off\n"
        )),
        CopyRole::Rebuild => conf.push_str(&format!(
            "\n# holdfast restore at {now}: a REBUILD of the cluster ({why}).\n# It archives into the plan as the cluster did.\n"
        )),
    }
    if let Some(port) = opts.port {
        conf.push_str(&format!("port = {port}\n"));
    }
    let mut f = data.open_file(
        "postgresql.auto.conf",
        OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE,
        0o600,
    )?;
    f.write_all(conf.as_bytes())?;
    f.sync_all()?;
    let signal = data.open_file(
        "recovery.signal",
        OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC,
        0o600,
    )?;
    signal.sync_all()?;
    data.sync()
}

pub struct Recovered {
    pub segments_replayed: u64,
    pub reached: Option<String>,
    pub server: PgServer,
}

/// A PostgreSQL server started on a restored data directory; stopped
/// (`pg_ctl stop -m fast`) when dropped unless kept.
pub struct PgServer {
    dir: PathBuf,
    bin: Option<PathBuf>,
    address: Address,
    log: PathBuf,
    keep: bool,
}

impl PgServer {
    fn pg_ctl(&self) -> PathBuf {
        pg_program(self.bin.as_deref(), "pg_ctl")
    }

    /// Whether `pg_ctl status` says the server runs: `Some(false)` only
    /// for its "no server running" answer (exit 3); `None` when it could
    /// not tell (it failed otherwise, or did not answer in time on a busy
    /// machine), which is no evidence that the server stopped.
    async fn alive(&self) -> Option<bool> {
        let mut cmd = Command::new(self.pg_ctl());
        cmd.arg("-D").arg(&self.dir).arg("status");
        match process::output(cmd, POLL_DEADLINE).await {
            Ok(o) if o.status.success() => Some(true),
            Ok(o) if o.status.code() == Some(3) => Some(false),
            _ => None,
        }
    }
}

#[async_trait]
impl ScratchServer for PgServer {
    fn address(&self) -> &Address {
        &self.address
    }

    fn log(&self) -> &PathBuf {
        &self.log
    }

    async fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, String> {
        let mut cmd = Command::new(pg_program(self.bin.as_deref(), "psql"));
        cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-F", "|", "-h"])
            .arg(&self.address.host)
            .args(["-p", &self.address.port.to_string(), "-d", "postgres", "-c"])
            .arg(sql)
            .env("PGCONNECT_TIMEOUT", "5");
        let out = process::output(cmd, POLL_DEADLINE)
            .await
            .map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect())
    }

    async fn stop(mut self: Box<Self>) -> Result<(), String> {
        self.keep = true;
        let mut cmd = Command::new(self.pg_ctl());
        cmd.arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-w", "stop"]);
        let out = process::output(cmd, PG_CTL_DEADLINE)
            .await
            .map_err(|e| e.to_string())?;
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
    }

    fn keep(mut self: Box<Self>) {
        self.keep = true;
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if self.keep {
            return;
        }
        // A failed or cancelled restore: stop what it started. Drop cannot
        // await; `pg_ctl stop` without waiting returns at once.
        let _ = std::process::Command::new(self.pg_ctl())
            .arg("-D")
            .arg(&self.dir)
            .args(["-m", "fast", "-W", "stop"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Starts the server on `dir` and waits until it has finished recovery and
/// promoted, or until `deadline`; the server is stopped again on failure.
pub async fn start_and_recover(
    dir: &Path,
    port: Option<u16>,
    base: &BaseBackup,
    deadline: Duration,
) -> Result<Recovered, PgError> {
    let bin = pg_bin_for(base.major());
    let log = dir.with_file_name(format!(
        "{}-recovery.log",
        dir.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    ));
    let pg_ctl = pg_program(bin.as_deref(), "pg_ctl");
    let failed = |why: String, log: &Path| {
        let tail = log_tail(log);
        let next = start_by_hand(dir, &pg_ctl, port, log, &tail);
        PgError::Recovery {
            why,
            log: log.to_path_buf(),
            tail,
            next,
        }
    };
    let mut cmd = Command::new(pg_program(bin.as_deref(), "pg_ctl"));
    cmd.arg("-D")
        .arg(dir)
        .arg("-l")
        .arg(&log)
        .args(["-W", "start"]);
    if let Some(p) = port {
        cmd.args(["-o", &format!("-p {p}")]);
    }
    let out = process::output(cmd, PG_CTL_DEADLINE)
        .await
        .map_err(|e| PgError::Program {
            program: "pg_ctl".into(),
            detail: format!("{e} (set HOLDFAST_PG_BIN)"),
        })?;
    if !out.status.success() {
        return Err(failed(
            format!(
                "pg_ctl start failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            &log,
        ));
    }
    let mut server = PgServer {
        dir: dir.to_path_buf(),
        bin,
        address: Address {
            host: String::new(),
            port: port.unwrap_or(5432),
        },
        log: log.clone(),
        keep: false,
    };
    let started = Instant::now();
    let mut seen_pid_file = false;
    let mut not_running = 0u32;
    loop {
        tokio::time::sleep(recovery_poll(started.elapsed())).await;
        if started.elapsed() > deadline {
            return Err(failed(
                format!(
                    "the server had not finished recovery after {}s (HOLDFAST_RECOVERY_TIMEOUT_SECONDS) and was stopped",
                    deadline.as_secs()
                ),
                &log,
            ));
        }
        let pid_file = dir.join("postmaster.pid");
        let pid_text = tokio::fs::read_to_string(&pid_file).await.ok();
        seen_pid_file |= pid_text.is_some();
        match server.alive().await {
            Some(true) => not_running = 0,
            // Not known this time: ask again (the deadline still bounds it).
            None => continue,
            Some(false) => {
                // `pg_ctl -W` returns before the postmaster wrote its pid
                // file, and `pg_ctl status` says "no server running" until
                // it has. Believed when said twice running.
                not_running += 1;
                if (seen_pid_file || started.elapsed() > PID_FILE_GRACE) && not_running >= 2 {
                    server.keep = true;
                    return Err(failed("the server stopped during recovery".into(), &log));
                }
                continue;
            }
        }
        // Only a postmaster that has opened its sockets is asked: one that
        // cannot bind its port has written its pid file (with that port)
        // and is about to exit, and whatever else answers there is not it.
        let Some(address) = pid_text
            .as_deref()
            .filter(|t| postmaster_listening(t))
            .and_then(postmaster_address)
        else {
            continue;
        };
        server.address = address;
        let in_recovery = server.query("SELECT pg_is_in_recovery()").await;
        if matches!(in_recovery.as_deref(), Ok([row]) if row.first().map(String::as_str) == Some("f"))
        {
            let text = tokio::fs::read_to_string(&log).await.unwrap_or_default();
            return Ok(Recovered {
                segments_replayed: replayed_segments(&text),
                reached: reached_from_log(&text),
                server,
            });
        }
    }
}

/// How long a server started for recovery may take to write its
/// `postmaster.pid` before `pg_ctl status` saying it is not running is
/// believed.
const PID_FILE_GRACE: Duration = Duration::from_secs(10);

/// How long to wait before asking again whether recovery has ended: often
/// at first, when a small restore's recovery ends within a second and each
/// poll late is time on-call waits for, then every 200 ms (each poll is a
/// `pg_ctl status` and a `psql`).
fn recovery_poll(elapsed: Duration) -> Duration {
    match elapsed.as_secs() {
        0 => Duration::from_millis(25),
        1..=9 => Duration::from_millis(50),
        _ => Duration::from_millis(200),
    }
}

/// Said where recovery fails with the server down: the data directory is
/// complete, with its recovery settings, so starting it by hand (as its
/// owner) resumes recovery where it stopped. A port in use is the common
/// case: PostgreSQL's hint names another server, not this way out.
fn start_by_hand(dir: &Path, pg_ctl: &Path, port: Option<u16>, log: &Path, tail: &str) -> String {
    let owner = owner_of(dir);
    let in_use = tail.contains("Address already in use");
    let port = if in_use {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .ok()
            .or(port.map(|p| p.wrapping_add(1)))
    } else {
        port
    };
    let command = format!(
        "{pg_ctl} -D {dir}{port} -l {log} start",
        pg_ctl = pg_ctl.display(),
        dir = dir.display(),
        port = port.map(|p| format!(" -o '-p {p}'")).unwrap_or_default(),
        log = log.display(),
    );
    if in_use {
        format!(
            "The port is in use (by another server). The data directory {} is restored and ready: start it by hand on a free port (this one was free just now), as its owner {owner}: {command}",
            dir.display()
        )
    } else {
        format!(
            "The data directory {} is restored and ready: once the cause above is fixed, start it by hand as its owner {owner} (recovery resumes where it stopped): {command}",
            dir.display()
        )
    }
}

/// The name of the user owning `path` (from /etc/passwd), else its uid.
fn owner_of(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata(path).map(|m| m.uid()) else {
        return "the data directory's owner".into();
    };
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                let mut f = l.split(':');
                let name = f.next()?;
                (f.nth(1)?.parse::<u32>().ok()? == uid).then(|| name.to_string())
            })
        })
        .unwrap_or_else(|| format!("uid {uid}"))
}

/// Whether `postmaster.pid` says the postmaster accepts connections: its
/// status line (the 8th, PostgreSQL 10 and later) is written `ready` or
/// `standby` only after its sockets are open.
fn postmaster_listening(text: &str) -> bool {
    matches!(
        text.lines().nth(7).map(str::trim),
        Some("ready" | "standby")
    )
}

/// Port and a host to reach the server at, from `postmaster.pid`.
fn postmaster_address(text: &str) -> Option<Address> {
    let lines: Vec<&str> = text.lines().collect();
    let port = lines.get(3)?.trim().parse().ok()?;
    let socket = lines.get(4).map(|s| s.trim()).unwrap_or("");
    let listen = lines.get(5).map(|s| s.trim()).unwrap_or("");
    let host = if !socket.is_empty() {
        socket.to_string()
    } else if listen.is_empty() || listen == "*" {
        "127.0.0.1".to_string()
    } else {
        listen
            .split(',')
            .next()
            .unwrap_or("127.0.0.1")
            .trim()
            .to_string()
    };
    Some(Address { host, port })
}

/// Distinct WAL segments the server restored from the archive
/// (`restored log file "…" from archive`; one may be read twice).
fn replayed_segments(text: &str) -> u64 {
    text.lines()
        .filter_map(|l| l.split_once("restored log file \"")?.1.split('"').next())
        .filter(|name| name.len() == 24)
        .collect::<BTreeSet<_>>()
        .len() as u64
}

fn reached_from_log(text: &str) -> Option<String> {
    let stopping = text.lines().rev().find_map(|l| {
        l.split_once("recovery stopping ")
            .map(|(_, r)| r.trim().to_string())
    });
    let last = text.lines().rev().find_map(|l| {
        l.split_once("last completed transaction was at log time ")
            .map(|(_, r)| r.trim().to_string())
    });
    match (last, stopping) {
        (Some(l), Some(s)) => Some(format!("last transaction replayed at {l}; stopped {s}")),
        (Some(l), None) => Some(format!("last transaction replayed at {l}")),
        (None, Some(s)) => Some(format!("stopped {s}")),
        (None, None) => None,
    }
}

fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_postmaster_is_asked_only_once_its_pid_file_says_it_listens() {
        let pid = |status: &str| {
            format!("4242\n/srv/pgdata\n1764849600\n5433\n/tmp\nlocalhost\n  5433001    98304\n{status}\n")
        };
        // Written at start, before any socket: the port of a postmaster
        // that may never bind it.
        assert!(!postmaster_listening(
            "4242\n/srv/pgdata\n1764849600\n5433\n/tmp\n"
        ));
        assert!(!postmaster_listening(&pid("starting")));
        assert!(!postmaster_listening(&pid("stopping")));
        // The status is padded to a fixed width.
        assert!(postmaster_listening(&pid("ready   ")));
        assert!(postmaster_listening(&pid("standby ")));
        let a = postmaster_address(&pid("ready   ")).unwrap();
        assert_eq!((a.host.as_str(), a.port), ("/tmp", 5433));
    }

    #[test]
    fn the_server_log_says_where_recovery_stopped() {
        let log = "LOG:  restored log file \"000000010000000000000003\" from archive\nLOG:  recovery stopping before commit of transaction 750, time 2026-11-26 09:52:04.1+00\nLOG:  last completed transaction was at log time 2026-11-26 09:52:03.000001+00\n";
        assert_eq!(replayed_segments(log), 1);
        let r = reached_from_log(log).unwrap();
        assert!(
            r.contains("09:52:03.000001") && r.contains("transaction 750"),
            "{r}"
        );
    }
}
