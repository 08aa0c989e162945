//! Running PostgreSQL's client programs (`psql`, `pg_basebackup`,
//! `pg_dump`, `pg_restore`, `pg_ctl`, `pg_waldump`) against one server: the
//! connection reaches them as libpq environment variables, never as
//! arguments (where `ps` would show a password), and the programs of the
//! right major version are found in Debian's layout or `HOLDFAST_PG_BIN`.

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::plan::{DbConnection, Password, PgSslMode};
use crate::repository::source::SourceError;
use crate::secret::percent_decode;

/// How to run PostgreSQL's client programs against one server.
#[derive(Debug, Clone)]
pub struct PgClient {
    conn: DbConnection,
    sslmode: PgSslMode,
    /// The folder holding `pg_basebackup`, `psql`, … (`HOLDFAST_PG_BIN`), or
    /// `None` for `$PATH`.
    bin_dir: Option<PathBuf>,
}

impl PgClient {
    pub fn new(conn: DbConnection, sslmode: PgSslMode) -> Self {
        PgClient {
            conn,
            sslmode,
            bin_dir: pg_bin_dir(),
        }
    }

    /// A client for a `postgres://` URL (passwords in it stay out of
    /// arguments and logs like any other).
    pub fn from_url(url: &str) -> Self {
        PgClient::new(
            DbConnection {
                host: None,
                port: 5432,
                socket: None,
                user: None,
                database: None,
                dsn: Some(crate::secret::Secret::new(url)),
                password: None,
            },
            PgSslMode::Prefer,
        )
    }

    /// The same client with `password` given in the programs' environment
    /// (a `postgres://` URL's own password, if any, is set after it and wins).
    pub fn with_password(mut self, password: Option<crate::secret::Secret>) -> Self {
        self.conn.password = password.map(Password::Value);
        self
    }

    /// A client command with the connection in its environment (never in its
    /// arguments, where `ps` would show a password).
    pub fn command(&self, program: &str, database: Option<&str>) -> Result<Command, SourceError> {
        let mut cmd = Command::new(pg_program(self.bin_dir.as_deref(), program));
        for var in [
            "PGHOST",
            "PGPORT",
            "PGUSER",
            "PGDATABASE",
            "PGPASSWORD",
            "PGSERVICE",
        ] {
            cmd.env_remove(var);
        }
        cmd.env("PGAPPNAME", "holdfast");
        let c = &self.conn;
        if let Some(dsn) = &c.dsn {
            // As libpq environment variables, never as an argument: the URL
            // may carry a password.
            let mut vars = url_env(dsn.expose())?;
            if let Some(db) = database {
                vars.retain(|(k, _)| *k != "PGDATABASE");
                vars.push(("PGDATABASE", db.to_string()));
            }
            if !vars.iter().any(|(k, _)| *k == "PGSSLMODE") {
                cmd.env("PGSSLMODE", sslmode_str(self.sslmode));
            }
            for (var, value) in vars {
                cmd.env(var, value);
            }
        } else {
            cmd.env("PGSSLMODE", sslmode_str(self.sslmode));
            if let Some(h) = &c.host {
                cmd.env("PGHOST", h);
            }
            cmd.env("PGPORT", c.port.to_string());
            if let Some(u) = &c.user {
                cmd.env("PGUSER", u);
            }
            if let Some(db) = database.or(c.database.as_deref()) {
                cmd.env("PGDATABASE", db);
            }
        }
        cmd.env("PGCONNECT_TIMEOUT", "10");
        match &c.password {
            Some(Password::Value(s)) => {
                cmd.env("PGPASSWORD", s.expose());
            }
            Some(Password::File(p)) => {
                let text = std::fs::read_to_string(p).map_err(|e| SourceError::io(p, e))?;
                cmd.env("PGPASSWORD", text.trim_end_matches(['\n', '\r']));
            }
            None => {}
        }
        Ok(cmd)
    }

    /// Runs one query with `psql` and returns its unaligned rows, fields
    /// split on `|`.
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, SourceError> {
        self.query_in(None, sql)
    }

    /// [`PgClient::query`] in `database` instead of the connection's own.
    pub fn query_in(
        &self,
        database: Option<&str>,
        sql: &str,
    ) -> Result<Vec<Vec<String>>, SourceError> {
        let mut cmd = self.command("psql", database)?;
        cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-F", "|", "-c", sql]);
        let out = run(cmd, "psql")?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| l.split('|').map(str::to_owned).collect())
            .collect())
    }

    pub fn describe(&self) -> String {
        self.conn.to_string()
    }
}

/// One `psql` kept open on one server session, asked one statement at a time
/// (a non-exclusive base backup must start and stop on the same session).
/// Each answer is read up to a marker line echoed after the statement, with
/// a deadline. Dropping it ends `psql`, which ends the session, and the
/// server then aborts anything the session left running (a backup started
/// and not stopped).
pub struct PgSession {
    child: std::process::Child,
    stdin: Option<std::process::ChildStdin>,
    lines: std::sync::mpsc::Receiver<String>,
    /// What `psql` printed on stderr, once it has ended.
    stderr: Option<std::thread::JoinHandle<Vec<String>>>,
    asked: u64,
}

impl PgClient {
    /// Opens a held session named `app` (its `application_name`).
    pub fn session(&self, app: &str) -> Result<PgSession, SourceError> {
        use std::io::BufRead;
        let mut cmd = self.command("psql", None)?;
        cmd.env("PGAPPNAME", app);
        cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-F", "|"]);
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| spawn_error("psql", &cmd, e))?;
        let stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let (tx, lines) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in io::BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let log = std::thread::spawn(move || {
            let mut said = Vec::new();
            for line in io::BufReader::new(stderr).lines().map_while(Result::ok) {
                tracing::debug!(target: "holdfast::psql", "{line}");
                said.push(line);
            }
            said
        });
        Ok(PgSession {
            stdin: child.stdin.take(),
            child,
            lines,
            stderr: Some(log),
            asked: 0,
        })
    }
}

impl PgSession {
    /// Runs `sql` (one statement, no trailing `;`) and returns its rows,
    /// fields split on `|`, waiting at most `deadline` for them.
    pub fn ask(&mut self, sql: &str, deadline: Duration) -> Result<Vec<Vec<String>>, SourceError> {
        use std::io::Write;
        self.asked += 1;
        let marker = format!("__holdfast_answer_{}_{}__", std::process::id(), self.asked);
        let sent = self
            .stdin
            .as_mut()
            .map(|w| {
                w.write_all(format!("{sql};\n\\echo {marker}\n").as_bytes())
                    .and_then(|_| w.flush())
            })
            .unwrap_or_else(|| Err(io::Error::other("the session is closed")));
        if let Err(e) = sent {
            return Err(self.failed(&format!("cannot send the statement: {e}")));
        }
        let until = std::time::Instant::now() + deadline;
        let mut rows = Vec::new();
        loop {
            let left = until.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line == marker => return Ok(rows),
                Ok(line) if line.is_empty() => {}
                Ok(line) => rows.push(line.split('|').map(str::to_owned).collect()),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    return Err(self.failed(&format!("no answer within {} s", deadline.as_secs())))
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(self.failed("the session ended"))
                }
            }
        }
    }

    /// The error for a failed statement, with what `psql` said; the session
    /// is ended.
    fn failed(&mut self, what: &str) -> SourceError {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Its stderr ends with it.
        let said = self
            .stderr
            .take()
            .and_then(|t| t.join().ok())
            .unwrap_or_default()
            .join("; ");
        SourceError::Database {
            what: "psql session".into(),
            detail: if said.is_empty() {
                what.to_string()
            } else {
                format!("{what}: {said}")
            },
        }
    }

    /// Ends the session cleanly (`\q`), waiting at most `deadline`.
    pub fn close(mut self, deadline: Duration) {
        use std::io::Write;
        if let Some(mut w) = self.stdin.take() {
            let _ = w.write_all(b"\\q\n");
        }
        let until = std::time::Instant::now() + deadline;
        while std::time::Instant::now() < until {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for PgSession {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

fn sslmode_str(m: PgSslMode) -> &'static str {
    match m {
        PgSslMode::Disable => "disable",
        PgSslMode::Allow => "allow",
        PgSslMode::Prefer => "prefer",
        PgSslMode::Require => "require",
        PgSslMode::VerifyCa => "verify-ca",
        PgSslMode::VerifyFull => "verify-full",
    }
}

/// `HOLDFAST_PG_BIN`, else the newest `/usr/lib/postgresql/*/bin` (Debian's
/// layout, where the client programs on `$PATH` are wrappers), else `$PATH`.
pub fn pg_bin_dir() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os("HOLDFAST_PG_BIN") {
        return Some(PathBuf::from(dir));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let v: u32 = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("pg_ctl").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, p)| p)
}

/// The programs of PostgreSQL `major` (Debian's `/usr/lib/postgresql/<major>/bin`),
/// which read that version's WAL and data directories; else [`pg_bin_dir`].
pub fn pg_bin_for(major: u64) -> Option<PathBuf> {
    let versioned = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if versioned.join("pg_ctl").exists() {
        Some(versioned)
    } else {
        pg_bin_dir()
    }
}

pub fn pg_program(bin_dir: Option<&std::path::Path>, program: &str) -> PathBuf {
    match bin_dir {
        Some(d) => d.join(program),
        None => PathBuf::from(program),
    }
}

/// Runs a client program to its end, returning stdout, or its stderr as the error.
pub(super) fn run(mut cmd: Command, what: &str) -> Result<Vec<u8>, SourceError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| spawn_error(what, &cmd, e))?;
    if !out.status.success() {
        return Err(SourceError::Database {
            what: what.to_string(),
            detail: format!(
                "{}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(out.stdout)
}

pub(super) fn spawn_error(what: &str, cmd: &Command, e: io::Error) -> SourceError {
    SourceError::Database {
        what: what.to_string(),
        detail: format!(
            "cannot run {}: {e} (install PostgreSQL's client programs, or set HOLDFAST_PG_BIN to their folder)",
            cmd.get_program().to_string_lossy()
        ),
    }
}

/// A `postgres://user:password@host:port/dbname?param=value` URL as libpq
/// environment variables.
pub fn url_env(url: &str) -> Result<Vec<(&'static str, String)>, SourceError> {
    let bad = |why: &str| SourceError::Database {
        what: "connection URL".into(),
        detail: format!("{why} (write postgres://user:password@host:port/dbname?sslmode=…)"),
    };
    let rest = url
        .strip_prefix("postgres://")
        .or_else(|| url.strip_prefix("postgresql://"))
        .ok_or_else(|| bad("it does not start with postgres://"))?;
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, db) = main.split_once('/').unwrap_or((main, ""));
    let (userinfo, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let mut env = Vec::new();
    if let Some(u) = userinfo {
        let (user, password) = match u.split_once(':') {
            Some((u, p)) => (u, Some(p)),
            None => (u, None),
        };
        if !user.is_empty() {
            env.push(("PGUSER", percent_decode(user)));
        }
        if let Some(p) = password {
            env.push(("PGPASSWORD", percent_decode(p)));
        }
    }
    if hostport.contains(',') {
        return Err(bad("several hosts in one URL are not supported"));
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("unclosed [ in the host"))?;
        (h.to_string(), after.strip_prefix(':').map(str::to_string))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p.to_string())),
            None => (hostport.to_string(), None),
        }
    };
    if !host.is_empty() {
        env.push(("PGHOST", percent_decode(&host)));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        if p.parse::<u16>().is_err() {
            // Not echoed: a password with an unescaped `/` or `@` ends up here.
            return Err(bad("the port is not a number (a password holding / ? # @ or : must be percent-encoded)"));
        }
        env.push(("PGPORT", p));
    }
    if !db.is_empty() {
        env.push(("PGDATABASE", percent_decode(db)));
    }
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let var = match k {
            "sslmode" => "PGSSLMODE",
            "sslrootcert" => "PGSSLROOTCERT",
            "sslcert" => "PGSSLCERT",
            "sslkey" => "PGSSLKEY",
            "application_name" => "PGAPPNAME",
            "connect_timeout" => "PGCONNECT_TIMEOUT",
            "options" => "PGOPTIONS",
            "target_session_attrs" => "PGTARGETSESSIONATTRS",
            "host" => "PGHOST",
            "port" => "PGPORT",
            "user" => "PGUSER",
            "dbname" => "PGDATABASE",
            other => {
                // Named only when it looks like a parameter name: anything
                // else may be part of a password that was not percent-encoded.
                let named = if !other.is_empty()
                    && other.len() <= 40
                    && other.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                {
                    format!("parameter `{other}`")
                } else {
                    "a parameter".to_string()
                };
                return Err(bad(&format!(
                    "{named} is not supported; use sslmode, sslrootcert, sslcert, sslkey, application_name, connect_timeout, options, target_session_attrs, host, port, user or dbname"
                )));
            }
        };
        env.push((var, percent_decode(v)));
    }
    Ok(env)
}

/// A connection string safe to show: the password of a URL's userinfo, and
/// any `password=` value, replaced by `***`. Errors that echo what the user
/// gave go through this.
pub fn redact_url(s: &str) -> String {
    let mut out = match s.split_once("://") {
        Some((scheme, rest)) => match rest.rsplit_once('@') {
            Some((userinfo, after)) => {
                let user = userinfo.split_once(':').map(|(u, _)| u);
                match user {
                    Some(u) => format!("{scheme}://{u}:***@{after}"),
                    None => s.to_string(),
                }
            }
            None => s.to_string(),
        },
        None => s.to_string(),
    };
    // `password=…` in a query string or a `key=value` connection string.
    let mut from = 0;
    while let Some(i) = out[from..].find("password=") {
        let start = from + i + "password=".len();
        let end = out[start..]
            .find(['&', ' '])
            .map_or(out.len(), |e| start + e);
        out.replace_range(start..end, "***");
        from = start + 3;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dsn_is_pointed_at_another_database_keeping_its_options() {
        let client = PgClient::from_url;
        let env = |url: &str, db: &str| -> std::collections::HashMap<String, String> {
            client(url)
                .command("psql", Some(db))
                .unwrap()
                .get_envs()
                .filter_map(|(k, v)| Some((k.to_str()?.to_string(), v?.to_str()?.to_string())))
                .collect()
        };
        let e = env("postgres://u:p@h:5433/app?sslmode=require", "other db");
        assert_eq!(e["PGDATABASE"], "other db");
        assert_eq!(e["PGSSLMODE"], "require");
        assert_eq!((e["PGHOST"].as_str(), e["PGPORT"].as_str()), ("h", "5433"));
        assert_eq!(env("postgresql://h", "x")["PGDATABASE"], "x");
        let e = env("postgres://h?application_name=a", "x");
        assert_eq!(
            (e["PGDATABASE"].as_str(), e["PGAPPNAME"].as_str()),
            ("x", "a")
        );
    }

    #[test]
    fn a_password_is_redacted_wherever_a_connection_string_is_echoed() {
        assert_eq!(
            redact_url("postgres://app:s3cr%2Ft@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(
            redact_url("postgres://app:p@ss/w@db/x"),
            "postgres://app:***@db/x"
        );
        assert_eq!(redact_url("postgres://app@db/x"), "postgres://app@db/x");
        assert_eq!(
            redact_url("host=db password=hunter2 dbname=x"),
            "host=db password=*** dbname=x"
        );
        assert_eq!(
            redact_url("postgres://db/x?password=hunter2&sslmode=require"),
            "postgres://db/x?password=***&sslmode=require"
        );
    }

    #[test]
    fn a_url_error_never_echoes_a_password_that_was_not_percent_encoded() {
        for url in [
            "postgres://app:pa/ss9@db/x",
            "postgres://app:pa?ss9@db/x",
            "postgres://app:pa:ss9@db:5432/x",
        ] {
            if let Err(e) = url_env(url) {
                assert!(!e.to_string().contains("ss9"), "{e}");
            }
        }
        let encoded = format!(
            "postgres://app:{}@db/x",
            crate::secret::percent_encode("p/w?@:%")
        );
        let env = url_env(&encoded).unwrap();
        assert!(
            env.contains(&("PGPASSWORD", "p/w?@:%".to_string())),
            "{env:?}"
        );
    }

    #[test]
    fn a_url_becomes_libpq_environment_variables() {
        let env = url_env("postgres://app%40x:p%2Fw@[::1]:5433/my%20db?sslmode=require").unwrap();
        assert_eq!(
            env,
            vec![
                ("PGUSER", "app@x".to_string()),
                ("PGPASSWORD", "p/w".to_string()),
                ("PGHOST", "::1".to_string()),
                ("PGPORT", "5433".to_string()),
                ("PGDATABASE", "my db".to_string()),
                ("PGSSLMODE", "require".to_string()),
            ]
        );
        assert_eq!(
            url_env("postgresql://db.internal/app").unwrap(),
            vec![
                ("PGHOST", "db.internal".to_string()),
                ("PGDATABASE", "app".to_string())
            ]
        );
        assert!(url_env("postgres://h:xx/db").is_err());
        assert!(url_env("postgres://h/db?weird=1")
            .unwrap_err()
            .to_string()
            .contains("weird"));
    }
}
