//! A PostgreSQL 15 cluster of the test's own: initdb into a temp folder, a
//! free port, `archive_command` = the built holdfast's `wal-push` into a
//! local repository (or the S3 one a test's plan names), stopped when
//! dropped; never the shared server on 5432.
//! Server and holdfast run as the `postgres` OS user, as on a database host.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use super::bin::{holdfast_as_postgres, run_as, s, text, BIN, TEST_KEY};

pub const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

pub fn as_postgres(program: &str, args: &[&str]) -> Output {
    // holdfast, and the restore_command / archive_command of a server
    // pg_ctl starts, get the test key, through env(1) as runuser drops it.
    let mut c = if program == BIN {
        super::bin::command_as("postgres", &[])
    } else {
        let mut c = run_as("postgres", "env");
        c.arg(format!("HOLDFAST_KEY={TEST_KEY}")).arg(program);
        c
    };
    c.args(args).output().expect("runuser runs")
}

/// A cluster that archives through `holdfast wal-push` into a local repository.
pub struct Cluster {
    pub dir: tempfile::TempDir,
    port: u16,
    /// The plan `pg` backing this cluster up into `repo/`.
    pub plan: PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with("{mode: compliance, days: 8}", "{keep_daily: 7}")
    }

    pub fn start_with(lock: &str, retention: &str) -> Cluster {
        let cluster = Cluster::create(None, lock, retention);
        cluster.start_server();
        cluster
    }

    /// [`Cluster::start`] with asynchronous archiving: `archive_command` is
    /// `wal-push --async` with its spool in `spool/`.
    pub fn start_async() -> Cluster {
        let cluster = Cluster::create(None, "{mode: compliance, days: 8}", "{keep_daily: 7}");
        let spool = cluster.path("spool");
        std::fs::create_dir(&spool).unwrap();
        chown_postgres(&spool);
        let conf = format!(
            "archive_command = 'HOLDFAST_LOG=warn HOLDFAST_KEY=\"{TEST_KEY}\" {BIN} wal-push --async --spool {spool} --plan {plan} %p'\n",
            spool = spool.display(),
            plan = cluster.plan.display()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(cluster.path("data/postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        cluster.start_server();
        cluster
    }

    /// initdb and the archiving settings, not started yet. `repository` is
    /// the plan's `repository:` block as a YAML flow mapping; `None` for a
    /// local repository in `repo/`.
    pub fn create(repository: Option<&str>, lock: &str, retention: &str) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let root = dir.path();
        let plan = root.join("pg.yaml");
        let repository = match repository {
            Some(r) => r.to_string(),
            None => {
                std::fs::create_dir(root.join("repo")).unwrap();
                format!("{{url: {}}}", root.join("repo").display())
            }
        };
        std::fs::write(
            &plan,
            format!(
                "name: pg\nsource: {{type: postgres, host: 127.0.0.1, port: {port}, user: postgres}}\nrepository: {repository}\nschedule: {{backup: '0 1 * * *'}}\nlock: {lock}\nretention: {retention}\n",
            ),
        )
        .unwrap();
        chown_postgres(root);
        let data = root.join("data");
        let out = as_postgres(
            &format!("{PG_BIN}/initdb"),
            &[
                "-D",
                s(&data),
                "-U",
                "postgres",
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{root}'\nwal_level = replica\narchive_mode = on\narchive_command = 'HOLDFAST_LOG=warn HOLDFAST_KEY=\"{TEST_KEY}\" {BIN} wal-push --plan {plan} %p'\nfsync = off\n",
            root = root.display(),
            plan = plan.display()
        );
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))
            .unwrap();
        std::io::Write::write_all(&mut file, conf.as_bytes()).unwrap();
        Cluster { dir, port, plan }
    }

    /// Starts the server, without the test's AWS_* variables: its
    /// `archive_command` reaches a store only through the plan, as on a
    /// database host whose server was started by systemd.
    pub fn start_server(&self) {
        let out = without_aws(&mut run_as("postgres", &format!("{PG_BIN}/pg_ctl")))
            .args(["-D", s(&self.path("data")), "-l", s(&self.path("log"))])
            .args(["-w", "start"])
            .output()
            .expect("runuser runs");
        assert!(out.status.success(), "pg_ctl start: {}", self.log());
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.path("log")).unwrap_or_default()
    }

    pub fn sql(&self, sql: &str) -> String {
        sql_at(self.port, sql)
    }

    /// Writes some rows and switches to a new WAL segment; returns the
    /// segment that was switched away from.
    pub fn fill_segment(&self, n: u32) -> String {
        self.sql(&format!(
            "CREATE TABLE IF NOT EXISTS orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, {}) i",
            1000 * n
        ));
        self.sql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until `segment` is archived; panics with the server log if not.
    pub fn wait_archived(&self, segment: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.sql("SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver");
            if last.as_str() >= segment && !last.is_empty() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{segment} not archived (last: {last}); server log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The names of the archived WAL files, sorted.
    pub fn archived(&self) -> Vec<String> {
        let dir = self.path("repo/objects/wal/pg");
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }

    /// holdfast as the `postgres` OS user.
    pub fn holdfast(&self, args: &[&str]) -> Output {
        holdfast_as_postgres(args)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `pgbench -i` at `scale`.
    pub fn pgbench_init(&self, scale: u32) {
        let out = pgbench(self.port, &["-i", "-q", "-s", &scale.to_string()]);
        assert!(out.status.success(), "pgbench -i: {}", text(&out));
    }

    /// Switches WAL and waits until the segment switched away from is archived.
    pub fn archive_now(&self) -> String {
        let seg = self.sql("SELECT pg_walfile_name(pg_switch_wal())");
        self.wait_archived(&seg, Duration::from_secs(60));
        seg
    }

    /// The server's clock, as RFC 3339 UTC.
    pub fn now(&self) -> String {
        now_at(self.port)
    }

    /// Stops the server at once, as a crash would.
    pub fn stop(&self) {
        stop_server(&self.path("data"));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `command` without the test's AWS_* variables, so a store is reached
/// only with the credentials the plan names.
pub fn without_aws(command: &mut Command) -> &mut Command {
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("AWS_") {
            command.env_remove(name);
        }
    }
    command
}

/// A restored server started by `holdfast restore --start`; stopped at the end.
pub struct Restored {
    pub data: PathBuf,
}

impl Drop for Restored {
    fn drop(&mut self) {
        stop_server(&self.data);
    }
}

/// `pg_ctl stop -m immediate` on the server of `data`, if one runs.
fn stop_server(data: &Path) {
    let _ = as_postgres(
        &format!("{PG_BIN}/pg_ctl"),
        &["-D", s(data), "-m", "immediate", "-w", "stop"],
    );
}

/// pgbench against the server on 127.0.0.1:`port`, ready for arguments.
pub fn pgbench_command(port: u16) -> Command {
    let mut c = Command::new(format!("{PG_BIN}/pgbench"));
    c.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"]);
    c
}

pub fn pgbench(port: u16, args: &[&str]) -> Output {
    pgbench_command(port)
        .args(args)
        .arg("postgres")
        .output()
        .unwrap()
}

/// psql against any server on 127.0.0.1.
pub fn sql_at(port: u16, sql: &str) -> String {
    sql_in(port, "postgres", sql)
}

pub fn sql_in(port: u16, db: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-U",
            "postgres",
            "-d",
            db,
            "-XAtqc",
            sql,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// The clock of the server on `port`, as RFC 3339 UTC.
pub fn now_at(port: u16) -> String {
    sql_at(
        port,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
}

/// Every table in `public` with its row count and a checksum over its rows
/// in a fixed order: equal strings mean equal contents.
pub fn state(port: u16) -> String {
    state_in(port, "postgres")
}

pub fn state_in(port: u16, db: &str) -> String {
    let tables = sql_in(
        port,
        db,
        "SELECT relname FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace ORDER BY 1",
    );
    tables
        .lines()
        .map(|t| {
            let sum = sql_in(
                port,
                db,
                &format!(
                    "SELECT count(*) || ' rows, md5 ' || md5(coalesce(string_agg(x::text, '|' ORDER BY x::text), '')) FROM {t} x"
                ),
            );
            format!("{t}: {sum}")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn chown_postgres(p: &Path) {
    let out = Command::new("chown")
        .args(["-R", "postgres:postgres", s(p)])
        .output()
        .unwrap();
    assert!(out.status.success());
}
