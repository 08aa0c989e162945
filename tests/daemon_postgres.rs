//! `holdfast daemon` as a real process on the production path: a
//! PostgreSQL 15 cluster of the test's own archiving through `holdfast
//! wal-push` into an S3 repository (SeaweedFS, Object Lock in compliance
//! mode), one plan whose backup, verify, prune and drill run on
//! seconds-level crons while the test writes rows. What on-call sees on
//! /status and /metrics, what `holdfast snapshots` says, a clean SIGTERM,
//! and a restore from the daemon's backups. Then the archive watch: WAL
//! archiving broken (`archive_command` not found) and repaired under the
//! daemon's eyes, seen on /status and /metrics and alerted to a webhook
//! (archive stalled, RPO over its limit, both resolved), for a superuser
//! plan and for a `REPLICATION`-only one. The daemon, like every holdfast
//! process here, runs as the `postgres` OS user with no AWS_* variables:
//! the plan's credentials are the only way into the bucket. Real time; every
//! wait is on a condition with a deadline.

mod common;

use std::io::{Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Timelike, Utc};
use common::bin::{command_as, json_of, s, text, BIN, TEST_KEY};
use common::free_port;
use common::postgres::{chown_postgres, sql_at, state, without_aws, Cluster, Restored};
use common::webhook::Receiver;
use serde_json::Value;

/// How long the daemon may take to show every job done once.
const JOBS_DEADLINE: Duration = Duration::from_secs(120);
/// The daemon's `--grace`; it must exit within it (plus the time a
/// cancelled job takes to unwind) after SIGTERM.
const GRACE: Duration = Duration::from_secs(30);

/// The `postgres` OS user: uid, gid and home, from the password database.
fn postgres_user() -> (u32, u32, String) {
    let out = Command::new("getent")
        .args(["passwd", "postgres"])
        .output()
        .unwrap();
    let line = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = line.trim().split(':').collect();
    assert!(f.len() >= 6, "getent passwd postgres: {line}");
    (
        f[2].parse().unwrap(),
        f[3].parse().unwrap(),
        f[5].to_string(),
    )
}

/// A cluster of the test's own (not started) whose plan `pg` archives into
/// a new Object-Lock bucket on the test S3 server, reached only through the
/// plan's credentials (a key file only `postgres` reads). Its lock is one
/// day: a compliance lock cannot be shortened or removed, so the test bucket
/// keeps these objects that long. [`repo_init`] once the plan is final.
fn s3_cluster(bucket_hint: &str, retention: &str) -> Cluster {
    let s3 = common::s3_env();
    let bucket = common::bucket_name(bucket_hint);
    let pg = Cluster::create(
        Some(&format!(
            "{{url: 's3://{bucket}/prod', endpoint: '{endpoint}', region: us-east-1, access_key_id: '{key_id}', secret_access_key_file: s3.key}}",
            endpoint = s3.endpoint,
            key_id = s3.access_key_id,
        )),
        "{mode: compliance, days: 1}",
        retention,
    );
    let key = pg.path("s3.key");
    std::fs::write(&key, format!("{}\n", s3.secret_access_key)).unwrap();
    chown_postgres(&key);
    std::fs::set_permissions(&key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    pg
}

/// `holdfast repo init` of the cluster's plan: the bucket with Object Lock.
fn repo_init(pg: &Cluster) {
    let init = json_of(&holdfast_pg(&[
        "repo",
        "init",
        "--plan",
        s(&pg.plan),
        "--json",
    ]));
    assert_eq!(init["bucket"]["object_lock"], true, "{init}");
}

/// holdfast as `postgres`, without the test's AWS_* variables.
fn holdfast_pg(args: &[&str]) -> Output {
    without_aws(&mut command_as("postgres", &[]))
        .args(args)
        .output()
        .expect("runuser runs")
}

/// `holdfast daemon` on one plan file, as `postgres`: started directly with
/// that uid (not through runuser, which would stand between the test's
/// signals and the daemon).
struct Daemon {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Daemon {
    fn start(plan: &Path, state: &Path, extra: &[&str]) -> Daemon {
        std::fs::create_dir_all(state).unwrap();
        chown_postgres(state);
        let port = free_port();
        let log = state.join("daemon.log");
        let (uid, gid, home) = postgres_user();
        let mut c = Command::new(BIN);
        // The environment a service manager gives a daemon of that user.
        without_aws(&mut c)
            .uid(uid)
            .gid(gid)
            .env("HOME", home)
            .env("USER", "postgres")
            .env("LOGNAME", "postgres")
            .env("HOLDFAST_LOG", "info")
            .env("HOLDFAST_KEY", TEST_KEY)
            .args(["daemon", "--plans", s(plan), "--state", s(state)])
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(["--grace", &format!("{}s", GRACE.as_secs())])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let d = Daemon {
            child: c.spawn().expect("holdfast daemon starts"),
            port,
            log,
        };
        d.wait_for("/healthz answering", Duration::from_secs(30), |d| {
            Ok(d.get("/healthz").is_some_and(|b| b == "ok\n"))
        });
        // The HTTP side answers before the first load of the plans is done.
        d.wait_for("the plan loaded", Duration::from_secs(30), |d| {
            Ok(d.get("/status")
                .and_then(|b| serde_json::from_str::<Value>(&b).ok())
                .is_some_and(|st| st["plans"].as_array().is_some_and(|p| !p.is_empty())))
        });
        d
    }

    fn get(&self, path: &str) -> Option<String> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let (head, body) = out.split_once("\r\n\r\n")?;
        head.starts_with("HTTP/1.1 200").then(|| body.to_string())
    }

    fn status(&self) -> Value {
        serde_json::from_str(&self.get("/status").expect("/status answers")).unwrap()
    }

    /// The one plan's entry in /status.
    fn plan(&self) -> Value {
        let st = self.status();
        match st["plans"].as_array().map(Vec::as_slice) {
            Some([p]) => p.clone(),
            _ => panic!("not one plan in /status: {st}"),
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `cond` holds; `cond` may give up at once with a reason
    /// (a job failed), and so does the wait past `within`.
    fn wait_for(
        &self,
        what: &str,
        within: Duration,
        mut cond: impl FnMut(&Daemon) -> Result<bool, String>,
    ) {
        let deadline = Instant::now() + within;
        loop {
            match cond(self) {
                Ok(true) => return,
                Ok(false) => {}
                Err(why) => panic!(
                    "while waiting for {what}: {why}\ndaemon log:\n{}",
                    self.log()
                ),
            }
            assert!(
                Instant::now() < deadline,
                "gave up waiting {within:?} for {what}; /status: {}\ndaemon log:\n{}",
                self.get("/status").unwrap_or_default(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn sigterm(&self) {
        let st = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// Waits up to `within` for the process to end; its exit status.
    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "daemon did not exit within {within:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of one series in a /metrics scrape.
fn metric(scrape: &str, series: &str) -> f64 {
    metric_in(scrape, series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{scrape}"))
}

/// The value of one series in a /metrics scrape, if it is there.
fn metric_in(scrape: &str, series: &str) -> Option<f64> {
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Rows written into `orders` every 100 ms from a thread of its own, until
/// dropped; how many, so far.
struct Writer {
    stop: Arc<AtomicBool>,
    rows: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    fn start(port: u16) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let rows = Arc::new(AtomicU64::new(0));
        let (s, r) = (stop.clone(), rows.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                sql_at(
                    port,
                    "INSERT INTO orders(note) SELECT 'daemon ' || md5(i::text) FROM generate_series(1, 100) i",
                );
                r.fetch_add(100, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        Writer {
            stop,
            rows,
            thread: Some(thread),
        }
    }

    fn rows(&self) -> u64 {
        self.rows.load(Ordering::SeqCst)
    }

    /// Stops writing; rows written in all.
    fn stop(mut self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().expect("the writer thread did not panic");
        }
        self.rows()
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Each job's last run in /status: `Ok(true)` when it ended ok, `Err` with
/// the job's error when it failed.
fn ran_ok(plan: &Value, job: &str) -> Result<bool, String> {
    let run = &plan["last_runs"][job];
    match run["outcome"].as_str() {
        Some("ok") => Ok(true),
        Some(_) => Err(format!("the {job} failed: {run}")),
        None => Ok(false),
    }
}

/// The restorable window `holdfast snapshots --json` gives: the earliest
/// `from` and the latest `to` over the snapshots' windows.
fn listed_window(rows: &[Value]) -> (Option<&str>, Option<&str>) {
    let from = rows
        .iter()
        .filter_map(|r| r["restorable"]["from"].as_str())
        .min_by_key(|t| t.parse::<DateTime<Utc>>().unwrap());
    let to = rows
        .iter()
        .filter_map(|r| r["restorable"]["to"].as_str())
        .max_by_key(|t| t.parse::<DateTime<Utc>>().unwrap());
    (from, to)
}

fn time(v: &Value) -> DateTime<Utc> {
    v.as_str()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("not a time: {v}"))
}

#[test]
fn the_daemon_backs_up_verifies_prunes_and_drills_a_postgres_cluster_on_s3_on_schedule() {
    let started = Instant::now();
    // keep_last: 2 gives prune snapshots to remove that their locks then hold.
    let pg = s3_cluster("pg-daemon", "{keep_last: 2}");
    // Seconds-level crons, and a drill whose check needs the rows.
    let scratch = pg.path("scratch");
    std::fs::create_dir(&scratch).unwrap();
    chown_postgres(&scratch);
    let text_of_plan = std::fs::read_to_string(&pg.plan).unwrap();
    let scheduled = text_of_plan.replace(
        "schedule: {backup: '0 1 * * *'}",
        "schedule: {backup: '*/10 * * * * *', verify: '*/15 * * * * *', prune: '*/15 * * * * *', drill: '*/20 * * * * *'}",
    );
    assert_ne!(
        scheduled, text_of_plan,
        "the cluster's plan has no schedule to replace"
    );
    let with_drill = |text: &str| {
        format!(
            "{text}drill:\n  scratch_dir: {}\n  max_duration: 2m\n  checks:\n    - name: orders written\n      sql: \"SELECT count(*) FROM orders\"\n      expect: {{at_least: 1000}}\n",
            scratch.display()
        )
    };
    std::fs::write(&pg.plan, with_drill(&scheduled)).unwrap();
    let plan = s(&pg.plan).to_string();
    repo_init(&pg);

    pg.start_server();
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 1000) i");
    let writer = Writer::start(pg.port());

    // A new plan backs up at once; then its crons.
    let mut d = Daemon::start(&pg.plan, &pg.path("state"), &[]);
    d.wait_for(
        "two snapshots, a verify, a prune and a drill done ok",
        JOBS_DEADLINE,
        |d| {
            let p = d.plan();
            let each = ["backup", "verify", "prune", "drill"].map(|j| ran_ok(&p, j));
            let mut all = true;
            for r in each {
                all &= r?;
            }
            Ok(all && p["snapshots"].as_u64().is_some_and(|n| n >= 2))
        },
    );
    let jobs_done = started.elapsed();
    assert!(writer.rows() > 0, "the writer wrote nothing meanwhile");

    let p = d.plan();
    assert_eq!(p["valid"], true, "{p}");
    assert!(p["error"].is_null(), "{p}");
    for job in ["backup", "verify", "prune", "drill"] {
        let run = &p["last_runs"][job];
        assert!(run["error"].is_null(), "{job}: {run}");
        assert!(
            run["duration_seconds"].as_f64().unwrap() >= 0.0,
            "{job}: {run}"
        );
        // Next runs are the crons' next times, not in the past.
        assert!(
            time(&p["next_runs"][job]) > Utc::now() - chrono::Duration::seconds(5),
            "{job}: {p}"
        );
    }
    let drill_summary = p["last_runs"]["drill"]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        drill_summary.starts_with("drill ")
            && drill_summary.contains(" passed: ")
            && drill_summary.contains(" 0 failed"),
        "{drill_summary}"
    );
    let from = time(&p["restorable"]["from"]);
    let to = time(&p["restorable"]["to"]);
    assert!(from <= to, "{p}");
    assert!(time(&p["last_backup"]["time"]) <= Utc::now(), "{p}");

    // /metrics: the plan's families, with sane values.
    let scrape = d.get("/metrics").expect("/metrics answers");
    let m = |name: &str| metric(&scrape, &format!("{name}{{plan=\"pg\"}}"));
    let now = Utc::now().timestamp() as f64;
    assert_eq!(m("holdfast_plan_valid"), 1.0);
    let last_success = m("holdfast_backup_last_success_timestamp_seconds");
    assert!(
        last_success <= now + 1.0 && last_success > now - JOBS_DEADLINE.as_secs_f64(),
        "last success {last_success}, now {now}"
    );
    assert!(m("holdfast_backup_duration_seconds") > 0.0);
    assert!(m("holdfast_backup_bytes_read") > 0.0);
    assert!(m("holdfast_snapshots") >= 2.0);
    let (oldest, newest) = (
        m("holdfast_restorable_oldest_timestamp_seconds"),
        m("holdfast_restorable_newest_timestamp_seconds"),
    );
    assert!(
        oldest > 1.7e9 && oldest <= newest && newest <= now + 1.0,
        "{oldest} {newest}"
    );
    assert_eq!(m("holdfast_verify_last_success"), 1.0);
    assert!(m("holdfast_verify_last_timestamp_seconds") <= now + 1.0);
    assert!(m("holdfast_prune_last_timestamp_seconds") <= now + 1.0);
    assert_eq!(m("holdfast_drill_last_success"), 1.0);
    assert!(m("holdfast_drill_rto_seconds") > 0.0);
    assert!(m("holdfast_drill_rpo_seconds") >= 0.0);
    // The SQL check and the built-ins (pg_amcheck, the restore's checksums).
    assert!(m("holdfast_drill_checks_passed") >= 2.0);
    assert_eq!(m("holdfast_drill_checks_failed"), 0.0);
    // What the lead quotes in the closing note: shown with --no-capture.
    eprintln!(
        "--- /metrics\n{scrape}--- /status\n{}\n---",
        serde_json::to_string_pretty(&d.status()).unwrap()
    );

    // `holdfast snapshots` agrees with /status, read while no job ran in
    // between (the same last runs before and after the listing, none running).
    // The seconds-level schedule leaves few such moments on a busy machine:
    // quiet it first (the daemon reloads a changed plan), then bring it back.
    // (Every five minutes: a daily schedule would need longer locks.)
    let quiet = text_of_plan.replace(
        "schedule: {backup: '0 1 * * *'}",
        "schedule: {backup: '0 */5 * * * *', verify: '10 */5 * * * *', prune: '20 */5 * * * *', drill: '30 */5 * * * *'}",
    );
    std::fs::write(&pg.plan, with_drill(&quiet)).unwrap();
    d.wait_for("the quiet schedule loaded", Duration::from_secs(60), |d| {
        let p = d.plan();
        let next = |job: &str| {
            p["next_runs"][job]
                .as_str()
                .and_then(|t| t.parse::<chrono::DateTime<Utc>>().ok())
        };
        Ok(p["valid"] == true
            && next("drill").is_some_and(|t| t.minute() % 5 == 0 && t.second() == 30))
    });
    let mut agreed = false;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !agreed {
        assert!(
            Instant::now() < deadline,
            "no quiet moment to compare:\n{}",
            d.log()
        );
        let before = d.plan();
        let rows = json_of(&holdfast_pg(&["snapshots", "--plan", &plan, "--json"]));
        let after = d.plan();
        if !before["running"].is_null()
            || !after["running"].is_null()
            || before["last_runs"] != after["last_runs"]
        {
            std::thread::sleep(Duration::from_millis(200));
            continue;
        }
        agreed = true;
        let rows = rows.as_array().unwrap_or_else(|| panic!("{rows}"));
        assert_eq!(
            Some(rows.len() as u64),
            after["snapshots"].as_u64(),
            "{after}\n{rows:?}"
        );
        let newest = rows.iter().max_by_key(|r| time(&r["time"])).unwrap();
        assert_eq!(
            newest["short_id"], after["last_backup"]["snapshot"],
            "{after}\n{newest}"
        );
        assert_eq!(time(&newest["time"]), time(&after["last_backup"]["time"]));
        let (from, to) = listed_window(rows);
        assert_eq!(
            from.map(str::to_string),
            after["restorable"]["from"].as_str().map(str::to_string),
            "{after}\n{rows:?}"
        );
        // /status's newest point is the daemon's view as of its last backup
        // or prune (or its archive watch): never ahead of the repository,
        // which may have archived more WAL since.
        let to = time(&Value::from(
            to.unwrap_or_else(|| panic!("no window: {rows:?}")),
        ));
        assert!(
            time(&before["restorable"]["to"]) <= to,
            "/status reaches further than the repository: {before}\n{rows:?}"
        );
        assert!(to >= time(&newest["time"]), "{rows:?}");
    }

    std::fs::write(&pg.plan, with_drill(&scheduled)).unwrap();

    // SIGTERM while a backup runs: it finishes within the grace and is
    // recorded, nothing new starts, and the daemon exits 0.
    let written = writer.stop();
    let at_stop = state(pg.port());
    let mut before = Value::Null;
    d.wait_for("a backup running", Duration::from_secs(60), |d| {
        before = d.plan();
        Ok(before["running"] == "backup")
    });
    let asked = Instant::now();
    d.sigterm();
    let exit = d.wait_exit(GRACE + Duration::from_secs(15));
    let took = asked.elapsed();
    let log = d.log();
    assert!(exit.success(), "{exit:?}\n{log}");
    let (_, after_term) = log
        .split_once("shutting down: no new jobs")
        .unwrap_or_else(|| panic!("no shutdown in the log:\n{log}"));
    assert!(
        !after_term.contains("starting "),
        "a job started after SIGTERM:\n{log}"
    );
    let state_file: Value =
        serde_json::from_str(&std::fs::read_to_string(pg.path("state/daemon-state.json")).unwrap())
            .unwrap();
    let recorded = &state_file["plans"]["pg"]["jobs"]["backup"];
    assert_eq!(recorded["ok"], true, "{state_file}");
    assert!(
        time(&recorded["started_at"]) > time(&before["last_runs"]["backup"]["started_at"]),
        "the backup running at SIGTERM was not recorded: {state_file}\n{log}"
    );
    // Nothing went wrong on the way: no warning, no error.
    let troubles: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(troubles.is_empty(), "{troubles:#?}\n{log}");
    // The drill's reports went into the daemon's state folder.
    let drill_id = drill_summary.split_whitespace().nth(1).unwrap().to_string();
    let reports: Vec<String> = std::fs::read_dir(pg.path("state/drills"))
        .unwrap_or_else(|e| panic!("no drill reports in the state folder: {e}\n{log}"))
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    for ext in [".json", ".md"] {
        assert!(
            reports
                .iter()
                .any(|r| r.ends_with(&format!("-{drill_id}{ext}"))),
            "no {ext} report of drill {drill_id} in {reports:?}"
        );
    }
    let left: Vec<_> = std::fs::read_dir(&scratch)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");

    // The daemon's backups restore: the newest of them plus the archived WAL
    // give back every row written, the ones after that backup too.
    let rows = json_of(&holdfast_pg(&["snapshots", "--plan", &plan, "--json"]));
    let newest = rows
        .as_array()
        .unwrap()
        .iter()
        .max_by_key(|r| time(&r["time"]))
        .unwrap()
        .clone();
    pg.archive_now();
    let to = pg.path("restored");
    let port = free_port();
    let _restored = Restored { data: to.clone() };
    let out = holdfast_pg(&[
        "restore",
        "--plan",
        &plan,
        "--latest",
        "--to",
        s(&to),
        "--start",
        "--port",
        &port.to_string(),
        "--json",
    ]);
    let report = json_of(&out);
    assert_eq!(report["base_backup"], newest["id"], "{report}\n{newest}");
    assert_eq!(
        state(port),
        at_stop,
        "the cluster restored from the daemon's backups differs from the one it backed up: {}",
        text(&out)
    );
    eprintln!(
        "measured: all four jobs done after {:.1} s; SIGTERM to exit {:.1} s ({}); {written} rows written meanwhile; {} snapshots; whole test {:.1} s",
        jobs_done.as_secs_f64(),
        took.as_secs_f64(),
        if after_term.contains("backup done") {
            "the backup finished in the grace"
        } else {
            "the backup had just finished"
        },
        rows.as_array().unwrap().len(),
        started.elapsed().as_secs_f64()
    );
}

/// What archiving is broken with: an `archive_command` that is not there,
/// as when holdfast was moved (PostgreSQL runs it without a PATH; exit 127
/// counts no failure in `pg_stat_archiver`, the archiver process ends and
/// is started again).
const BROKEN_ARCHIVE_COMMAND: &str = "/nonexistent/holdfast wal-push %p";
/// The daemon's `--archive-stall`.
const STALL: Duration = Duration::from_secs(5);
/// The plan's `rpo_limit`: above what working archiving shows (a few
/// seconds after a switch), reached soon after archiving breaks.
const RPO_LIMIT: Duration = Duration::from_secs(15);

/// Sets `archive_command` (`None`: back to postgresql.conf's) and reloads;
/// returns once a new session sees it: the postmaster has then reloaded and
/// signalled the archiver, which reads the change before it archives its
/// next segment.
fn set_archive_command(pg: &Cluster, command: Option<&str>) {
    match command {
        Some(c) => pg.sql(&format!("ALTER SYSTEM SET archive_command = '{c}'")),
        None => pg.sql("ALTER SYSTEM RESET archive_command"),
    };
    pg.sql("SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = pg.sql("SHOW archive_command");
        if match command {
            Some(c) => now == c,
            None => now != BROKEN_ARCHIVE_COMMAND,
        } {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "archive_command still {now:?} after the reload; server log:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The alerts of `name` for plan pg with that status, as received.
fn received(hook: &Receiver, name: &str, status: &str) -> Vec<Value> {
    hook.received()
        .into_iter()
        .filter(|a| {
            a["labels"]["alertname"] == name
                && a["labels"]["plan"] == "pg"
                && a["annotations"]["status"] == status
        })
        .collect()
}

#[test]
fn the_archive_watch_sees_archiving_stall_on_a_real_cluster_alerts_and_resolves_once_repaired() {
    let started = Instant::now();
    let pg = s3_cluster("pg-archwatch", "{keep_last: 1}");
    let text_of_plan = std::fs::read_to_string(&pg.plan).unwrap();
    std::fs::write(
        &pg.plan,
        format!("{text_of_plan}rpo_limit: {}s\n", RPO_LIMIT.as_secs()),
    )
    .unwrap();
    repo_init(&pg);
    pg.start_server();
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text)");
    let hook = Receiver::start();
    let d = Daemon::start(
        &pg.plan,
        &pg.path("state"),
        &[
            "--archive-poll",
            "1s",
            "--archive-stall",
            &format!("{}s", STALL.as_secs()),
            "--alert-webhook",
            &hook.url,
            "--alert-repeat",
            "1h",
        ],
    );
    let m = |scrape: &str, name: &str| metric_in(scrape, &format!("{name}{{plan=\"pg\"}}"));
    // A new plan backs up at once: the base backup its window starts from.
    d.wait_for("the first backup", JOBS_DEADLINE, |d| {
        ran_ok(&d.plan(), "backup")
    });

    // Archiving works: rows written and the segment switched; the watch sees
    // it archived, and the repository's newest point reaches the rows.
    let wrote = Utc::now() - chrono::Duration::milliseconds(1);
    let archived = pg.fill_segment(1);
    d.wait_for(
        &format!("{archived} archived, and the newest point at the rows written"),
        Duration::from_secs(60),
        |d| {
            let a = &d.plan()["archive"];
            if let Some(e) = a["error"].as_str() {
                return Err(format!("the archive watch failed: {e}"));
            }
            Ok(a["last_archived_wal"]
                .as_str()
                .is_some_and(|w| w >= archived.as_str())
                && a["newest_point"]
                    .as_str()
                    .is_some_and(|t| time(&Value::from(t)) >= wrote))
        },
    );
    // The RPO gauge follows: now minus a point at or after the write.
    let mut scrape = String::new();
    d.wait_for(
        "holdfast_rpo_seconds within the time since the write",
        Duration::from_secs(10),
        |d| {
            scrape = d.get("/metrics").unwrap_or_default();
            let since = (Utc::now() - wrote).num_milliseconds() as f64 / 1000.0;
            Ok(m(&scrape, "holdfast_rpo_seconds").is_some_and(|r| (0.0..=since).contains(&r)))
        },
    );
    let rpo_working = m(&scrape, "holdfast_rpo_seconds").unwrap();
    assert_eq!(
        m(&scrape, "holdfast_archive_stalled"),
        Some(0.0),
        "{scrape}"
    );
    assert_eq!(
        m(&scrape, "holdfast_archive_lag_seconds"),
        Some(0.0),
        "{scrape}"
    );
    let p = d.plan();
    let a = &p["archive"];
    assert_eq!(a["stalled"], false, "{p}");
    assert!(a["stalled_because"].is_null(), "{p}");
    assert_eq!(a["waiting"]["count"], 0, "{p}");
    assert!(
        p["rpo_seconds"].as_i64().is_some_and(|r| r >= 0) && p["rpo_limit_seconds"] == 15,
        "{p}"
    );
    // The RPO may have been over its limit while the first backup ran (its
    // alert resolved since): from here on, one more firing and resolved each.
    d.wait_for(
        "no RPO alert open, each one sent resolved",
        Duration::from_secs(30),
        |d| {
            let open = d.plan()["alerts"]
                .as_array()
                .unwrap()
                .iter()
                .any(|a| a["kind"] == "rpo_exceeded");
            Ok(!open
                && received(&hook, "HoldfastRpoExceeded", "firing").len()
                    == received(&hook, "HoldfastRpoExceeded", "resolved").len())
        },
    );
    let rpo_alerts = received(&hook, "HoldfastRpoExceeded", "firing").len();
    assert!(
        received(&hook, "HoldfastArchiveStalled", "firing").is_empty(),
        "{:?}",
        hook.alerts()
    );

    // Archiving breaks; rows written and the segment switched wait in
    // pg_wal/archive_status.
    set_archive_command(&pg, Some(BROKEN_ARCHIVE_COMMAND));
    let broke = Instant::now();
    let wrote_unarchived = Utc::now();
    let waiting = pg.fill_segment(1);
    d.wait_for(
        "holdfast_archive_stalled 1",
        STALL + Duration::from_secs(30),
        |d| {
            scrape = d.get("/metrics").unwrap_or_default();
            Ok(m(&scrape, "holdfast_archive_stalled") == Some(1.0))
        },
    );
    // Not before the segment waited --archive-stall.
    let stalled_after = broke.elapsed();
    assert!(stalled_after >= STALL, "stalled after {stalled_after:?}");
    eprintln!("--- /metrics while archiving stalled\n{scrape}---");
    // At least the stall time, and never more than the segment can have
    // waited (the server's file times are whole seconds).
    let lag = m(&scrape, "holdfast_archive_lag_seconds").unwrap();
    assert!(
        lag >= STALL.as_secs_f64() && lag <= stalled_after.as_secs_f64(),
        "lag {lag}, {stalled_after:?} since archiving broke\n{scrape}"
    );
    assert_eq!(
        pg.sql("SELECT min(name) FROM pg_ls_archive_statusdir() WHERE name LIKE '%.ready'"),
        format!("{waiting}.ready"),
        "the server's oldest waiting segment"
    );
    let p = d.plan();
    let a = &p["archive"];
    assert_eq!(a["stalled"], true, "{p}");
    assert_eq!(a["waiting"]["oldest"], waiting.as_str(), "{p}");
    assert!(
        a["lag_seconds"].as_f64().unwrap() >= STALL.as_secs_f64(),
        "{p}"
    );
    assert!(
        a["last_archived_wal"].as_str().unwrap() < waiting.as_str(),
        "{p}"
    );
    let why = a["stalled_because"].as_str().unwrap_or_default();
    for needle in [
        format!("has not archived WAL segment {waiting}"),
        format!(
            "last archived: {}",
            a["last_archived_wal"].as_str().unwrap()
        ),
        "exit 127".to_string(),
    ] {
        assert!(why.contains(&needle), "{needle:?} not in: {why}");
    }
    assert!(
        p["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["kind"] == "archive_stalled"),
        "/status lists the alert: {p}"
    );
    d.wait_for(
        "HoldfastArchiveStalled received",
        Duration::from_secs(30),
        |_| Ok(!received(&hook, "HoldfastArchiveStalled", "firing").is_empty()),
    );
    let alert = &received(&hook, "HoldfastArchiveStalled", "firing")[0];
    assert_eq!(alert["labels"]["severity"], "critical", "{alert}");
    assert_eq!(alert["labels"]["kind"], "archive_stalled", "{alert}");
    assert_eq!(
        alert["annotations"]["summary"], "plan pg: WAL archiving has stalled",
        "{alert}"
    );
    assert!(
        alert["annotations"]["description"]
            .as_str()
            .is_some_and(|t| t.contains(&format!("WAL segment {waiting}"))),
        "{alert}"
    );
    // Nothing new reaches the repository: the RPO grows past its limit.
    d.wait_for(
        "HoldfastRpoExceeded received",
        RPO_LIMIT + Duration::from_secs(30),
        |_| Ok(received(&hook, "HoldfastRpoExceeded", "firing").len() > rpo_alerts),
    );
    // The alert and /status are computed at different moments (the status
    // from its own, later or earlier, look at the archive): wait for the
    // status to show it too rather than read it once.
    d.wait_for(
        "rpo_seconds over the limit on /status",
        Duration::from_secs(30),
        |d| Ok(d.plan()["rpo_seconds"].as_i64().unwrap_or(0) >= RPO_LIMIT.as_secs() as i64),
    );
    let p = d.plan();
    assert!(
        time(&p["archive"]["newest_point"]) < wrote_unarchived,
        "rows not archived are not restorable: {p}"
    );
    assert_eq!(p["archive"]["stalled"], true, "{p}");

    // Repaired: the waiting segments are archived, the newest point catches
    // up with rows written now, and both alerts resolve.
    set_archive_command(&pg, None);
    let repaired = Instant::now();
    let wrote = Utc::now() - chrono::Duration::milliseconds(1);
    let last = pg.fill_segment(1);
    d.wait_for(
        &format!("archiving caught up: {last} archived, stalled and lag 0"),
        Duration::from_secs(90),
        |d| {
            scrape = d.get("/metrics").unwrap_or_default();
            let a = &d.plan()["archive"];
            Ok(m(&scrape, "holdfast_archive_stalled") == Some(0.0)
                && m(&scrape, "holdfast_archive_lag_seconds") == Some(0.0)
                && a["last_archived_wal"]
                    .as_str()
                    .is_some_and(|w| w >= last.as_str())
                && a["newest_point"]
                    .as_str()
                    .is_some_and(|t| time(&Value::from(t)) >= wrote))
        },
    );
    let caught_up = repaired.elapsed();
    // The RPO alert resolves only while the newest restorable point is
    // under 15 s old. Catching up can take longer than that on a loaded
    // machine (CI once took 45 s), so keep the cluster writing, as a live
    // one would, until both have resolved.
    let mut last_write = Instant::now();
    d.wait_for("both alerts resolved", Duration::from_secs(90), |_| {
        if last_write.elapsed() > Duration::from_secs(3) {
            pg.fill_segment(1);
            last_write = Instant::now();
        }
        Ok(
            received(&hook, "HoldfastArchiveStalled", "resolved").len() == 1
                && received(&hook, "HoldfastRpoExceeded", "resolved").len() > rpo_alerts,
        )
    });
    let p = d.plan();
    // Only the stall's alert is sure to stay gone: the cluster writes
    // nothing more, so its newest restorable point stops moving and the
    // RPO alert may rightly fire again 15 s later (CI once read it back
    // between the resolved webhook and this status).
    assert!(
        p["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|a| a["kind"] == "rpo_exceeded"),
        "{p}"
    );
    assert!(p["archive"]["stalled_because"].is_null(), "{p}");
    assert!(p["archive"]["error"].is_null(), "{p}");
    // Each sent once: --alert-repeat is an hour.
    assert_eq!(
        received(&hook, "HoldfastArchiveStalled", "firing").len(),
        1,
        "{:?}",
        hook.alerts()
    );
    assert_eq!(
        received(&hook, "HoldfastRpoExceeded", "firing").len(),
        rpo_alerts + 1,
        "{:?}",
        hook.alerts()
    );
    let log = d.log();
    assert!(log.contains("WAL archiving stalled"), "{log}");
    assert!(
        !log.contains("archive watch:"),
        "the watch failed a look:\n{log}"
    );
    eprintln!(
        "--- webhook bodies\n{}\n---",
        serde_json::to_string_pretty(&hook.bodies()).unwrap()
    );
    eprintln!(
        "measured: RPO while archiving worked {rpo_working:.1} s; stalled judged {:.1} s after the break (lag {lag:.1} s); caught up {:.1} s after the repair; whole test {:.1} s",
        stalled_after.as_secs_f64(),
        caught_up.as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}

#[test]
fn a_replication_only_role_that_cannot_list_archive_status_still_sees_archiving_stall() {
    // The role the deployment examples give a plan: REPLICATION, nothing
    // more; pg_ls_archive_statusdir() is not for it (superuser, pg_monitor).
    let pg = s3_cluster("pg-archwatch-role", "{keep_last: 1}");
    let text_of_plan = std::fs::read_to_string(&pg.plan).unwrap();
    let as_role = text_of_plan.replace("user: postgres}", "user: holdfast, dbname: postgres}");
    assert_ne!(as_role, text_of_plan, "the plan names no user to replace");
    std::fs::write(&pg.plan, as_role).unwrap();
    repo_init(&pg);
    pg.start_server();
    pg.sql("CREATE ROLE holdfast LOGIN REPLICATION");
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text)");
    let d = Daemon::start(
        &pg.plan,
        &pg.path("state"),
        &[
            "--archive-poll",
            "1s",
            "--archive-stall",
            &format!("{}s", STALL.as_secs()),
        ],
    );
    d.wait_for("the first backup", JOBS_DEADLINE, |d| {
        ran_ok(&d.plan(), "backup")
    });
    let archived = pg.fill_segment(1);
    d.wait_for(
        &format!("{archived} archived"),
        Duration::from_secs(60),
        |d| {
            let a = &d.plan()["archive"];
            if let Some(e) = a["error"].as_str() {
                return Err(format!("the archive watch failed: {e}"));
            }
            Ok(a["last_archived_wal"]
                .as_str()
                .is_some_and(|w| w >= archived.as_str()))
        },
    );
    let p = d.plan();
    assert!(
        p["archive"]["waiting"].is_null(),
        "the role lists pg_wal/archive_status after all: {p}"
    );
    assert_eq!(p["archive"]["stalled"], false, "{p}");

    set_archive_command(&pg, Some(BROKEN_ARCHIVE_COMMAND));
    let broke = Instant::now();
    let waiting = pg.fill_segment(1);
    let mut scrape = String::new();
    d.wait_for(
        "holdfast_archive_stalled 1",
        STALL + Duration::from_secs(30),
        |d| {
            scrape = d.get("/metrics").unwrap_or_default();
            Ok(metric_in(&scrape, "holdfast_archive_stalled{plan=\"pg\"}") == Some(1.0))
        },
    );
    let stalled_after = broke.elapsed();
    assert!(stalled_after >= STALL, "stalled after {stalled_after:?}");
    let p = d.plan();
    let why = p["archive"]["stalled_because"].as_str().unwrap_or_default();
    for needle in [
        format!("has not archived WAL segment {waiting}"),
        "exit 127".to_string(),
        "not visible to this role".to_string(),
    ] {
        assert!(why.contains(&needle), "{needle:?} not in: {why}");
    }
    assert!(p["archive"]["lag_seconds"].is_null(), "{p}");

    set_archive_command(&pg, None);
    let last = pg.fill_segment(1);
    d.wait_for(
        &format!("archiving caught up: {last} archived, not stalled"),
        Duration::from_secs(90),
        |d| {
            let a = &d.plan()["archive"];
            Ok(a["stalled"] == false
                && a["last_archived_wal"]
                    .as_str()
                    .is_some_and(|w| w >= last.as_str()))
        },
    );
    eprintln!(
        "measured (a REPLICATION-only role): stalled judged {:.1} s after the break",
        stalled_after.as_secs_f64()
    );
}
