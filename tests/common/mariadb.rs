//! A MariaDB server of the test's own: `mariadb-install-db` into a temp
//! folder, a free port and a socket inside the folder, binlogs on (row
//! format, `binlog.NNNNNN`), stopped when dropped; never the shared server on
//! 3306. Every wait has a deadline.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

pub struct Server {
    pub dir: tempfile::TempDir,
    pub port: u16,
    child: Option<Child>,
}

impl Server {
    /// A new server with binlogs on; `extra` mariadbd options.
    pub fn start(extra: &[&str]) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let port = super::free_port();
        let server = Server {
            dir,
            port,
            child: None,
        };
        // A temporary folder of its own: parallel installs in one /tmp
        // collide on the bootstrap's temporary table names.
        std::fs::create_dir(server.tmp()).unwrap();
        let out = Command::new("mariadb-install-db")
            .args([
                "--no-defaults",
                &format!("--datadir={}", server.data().display()),
                &format!("--tmpdir={}", server.tmp().display()),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ])
            .output()
            .expect("mariadb-install-db runs (Debian package mariadb-server)");
        assert!(
            out.status.success(),
            "mariadb-install-db: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut server = server;
        server.start_on(extra);
        server
    }

    /// Starts mariadbd on this folder's data directory.
    pub fn start_on(&mut self, extra: &[&str]) {
        assert!(self.child.is_none(), "already running");
        let log = std::fs::File::create(self.dir.path().join("mariadbd.log")).unwrap();
        let child = Command::new("mariadbd")
            .args([
                "--no-defaults".to_string(),
                format!("--datadir={}", self.data().display()),
                format!("--tmpdir={}", self.tmp().display()),
                format!("--port={}", self.port),
                "--bind-address=127.0.0.1".into(),
                format!("--socket={}", self.socket().display()),
                format!(
                    "--pid-file={}",
                    self.dir.path().join("mariadbd.pid").display()
                ),
                format!("--log-bin={}", self.data().join("binlog").display()),
                "--server-id=1".into(),
                "--binlog-format=ROW".into(),
                "--user=root".into(),
                "--innodb-buffer-pool-size=64M".into(),
                "--innodb-log-file-size=48M".into(),
                "--skip-name-resolve".into(),
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("mariadbd runs (Debian package mariadb-server)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.try_sql("SELECT 1").is_ok() {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("mariadbd exited ({status}): {}", self.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not accept connections within 60 s: {}",
                self.log_tail()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops the server (a clean shutdown), waiting at most 60 s.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("mariadbd did not stop within 60 s: {}", self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the server outright (as a crash would).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn tmp(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("mariadbd.sock")
    }

    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.path().join("mariadbd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn try_sql(&self, sql: &str) -> Result<String, String> {
        client_sql(&self.socket(), sql)
    }

    /// Runs SQL as root over the socket; panics with the error.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// The plan's source block for this server (TCP, root, no password).
    pub fn source_yaml(&self) -> String {
        format!(
            "{{type: mariadb, host: 127.0.0.1, port: {}, user: root}}",
            self.port
        )
    }

    /// Every table of `db` with its row count and a SHA-256 over its rows
    /// ordered by every column, for comparing states.
    pub fn checksums(&self, db: &str) -> BTreeMap<String, String> {
        checksums_at(&self.socket(), db)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// `mariadb` as root over `socket`, tab-separated rows.
pub fn client_sql(socket: &Path, sql: &str) -> Result<String, String> {
    let out = Command::new("mariadb")
        .args([
            "--no-defaults",
            &format!("--socket={}", socket.display()),
            "--user=root",
            "--batch",
            "--raw",
            "--skip-column-names",
            "--connect-timeout=5",
            "-e",
            sql,
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// [`Server::checksums`] for any server reached by its socket (a restored one).
pub fn checksums_at(socket: &Path, db: &str) -> BTreeMap<String, String> {
    let tables = client_sql(
        socket,
        &format!(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = '{db}' ORDER BY table_name"
        ),
    )
    .unwrap();
    tables
        .lines()
        .map(|t| {
            let rows =
                client_sql(socket, &format!("SELECT * FROM `{db}`.`{t}` ORDER BY 1")).unwrap();
            let n = rows.lines().count();
            (
                t.to_string(),
                format!(
                    "{n} rows, sha256 {}",
                    hex::encode(Sha256::digest(rows.as_bytes()))
                ),
            )
        })
        .collect()
}

/// `holdfast binlog-archive` for a plan, in the background (flushing the
/// growing binlog every second), stopped when dropped.
pub struct Archiver(std::process::Child);

impl Archiver {
    pub fn start(plan: &Path, state: &Path) -> Archiver {
        let log = std::fs::File::create(state.with_extension("log")).unwrap();
        Archiver(
            super::bin::command()
                .env("HOLDFAST_BINLOG_FLUSH_SECS", "1")
                .env("HOLDFAST_LOG", "info")
                .args([
                    "binlog-archive",
                    "--plan",
                    super::bin::s(plan),
                    "--state-dir",
                    super::bin::s(state),
                ])
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        )
    }
}

impl Drop for Archiver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The last GTID of each binlog the plan's archive holds (local repository,
/// the test key), read through the library.
pub fn archived_gtids(repo_dir: &Path, plan: &str) -> Vec<String> {
    use holdfast::repository::Repository;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let store = std::sync::Arc::new(
        holdfast::store::local::LocalStore::open(repo_dir.to_path_buf()).unwrap(),
    );
    let Ok(repo) = rt.block_on(Repository::open(store, &super::bin::test_repo_key())) else {
        return Vec::new();
    };
    let plan = holdfast::plan::PlanName::new(plan).unwrap();
    rt.block_on(holdfast::engine::mariadb::binlog::archived(
        repo.store().as_ref(),
        repo.crypto(),
        &plan,
    ))
    .map(|a| a.files.into_iter().filter_map(|f| f.last_gtid).collect())
    .unwrap_or_default()
}

/// Waits until the archive of plan `plan` (in `<server dir>/repo`) holds
/// the server's newest transaction.
pub fn wait_archived(server: &Server, plan: &str) {
    let want = server.sql("SELECT @@gtid_binlog_pos").trim().to_string();
    let repo = server.dir.path().join("repo");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !archived_gtids(&repo, plan).contains(&want) {
        assert!(
            std::time::Instant::now() < deadline,
            "the archive did not reach GTID {want} within 60 s: {:?}",
            archived_gtids(&repo, plan)
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}
