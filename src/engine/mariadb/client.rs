//! Running MariaDB's programs (`mariadb`, `mariadb-backup`, `mariadb-dump`,
//! `mariadb-binlog`, `mariadbd`) against one server. Host, port, socket and
//! user are arguments (nothing secret); the password reaches the programs
//! through `MYSQL_PWD` in their environment only, never an argument (where
//! `ps` would show it), a manifest or a log line. Every program runs with
//! `--no-defaults`: what it does is what the plan says, not what an option
//! file on the host happens to hold (`mariadb-backup` reads the data
//! directory and InnoDB settings from the running server).
//!
//! Programs come from `HOLDFAST_MARIADB_BIN` when set, else `PATH`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::plan::{DbConnection, Password};
use crate::repository::source::SourceError;
use crate::secret::Secret;

/// How to run MariaDB's programs against one server.
#[derive(Debug, Clone)]
pub struct MariaClient {
    conn: DbConnection,
    bin_dir: Option<PathBuf>,
}

/// Where a connection goes, with its secret apart.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    host: Option<String>,
    port: u16,
    socket: Option<PathBuf>,
    user: Option<String>,
    database: Option<String>,
    password: Option<Secret>,
}

impl MariaClient {
    pub fn new(conn: DbConnection) -> Self {
        MariaClient {
            conn,
            bin_dir: bin_dir(),
        }
    }

    /// A client for a server holdfast started itself (a drill's or a
    /// restore's), reached by its socket as `root`.
    pub fn local(socket: &Path) -> Self {
        MariaClient::new(DbConnection {
            host: None,
            port: 3306,
            socket: Some(socket.to_path_buf()),
            user: Some("root".into()),
            database: None,
            dsn: None,
            password: None,
        })
    }

    pub fn describe(&self) -> String {
        self.conn.to_string()
    }

    fn target(&self) -> Result<Target, SourceError> {
        let c = &self.conn;
        let mut t = match &c.dsn {
            Some(dsn) => parse_url(dsn.expose())?,
            None => Target {
                host: c.host.clone(),
                port: c.port,
                socket: c.socket.clone(),
                user: c.user.clone(),
                database: c.database.clone(),
                password: None,
            },
        };
        if t.password.is_none() {
            t.password = match &c.password {
                Some(Password::Value(s)) => Some(s.clone()),
                Some(Password::File(p)) => {
                    let text = std::fs::read_to_string(p).map_err(|e| SourceError::io(p, e))?;
                    Some(Secret::new(text.trim_end_matches(['\n', '\r'])))
                }
                None => None,
            };
        }
        Ok(t)
    }

    /// `program --no-defaults` with the connection: host/port or socket and
    /// user as arguments, the password as `MYSQL_PWD`. `with_database` adds
    /// the plan's database (for `mariadb`; other programs take none).
    pub fn command(&self, program: &str) -> Result<Command, SourceError> {
        let t = self.target()?;
        let mut cmd = Command::new(program_path(self.bin_dir.as_deref(), program));
        cmd.arg("--no-defaults");
        cmd.env_remove("MYSQL_PWD")
            .env_remove("MYSQL_HOST")
            .env_remove("MYSQL_TCP_PORT")
            .env_remove("MYSQL_UNIX_PORT");
        match (&t.socket, &t.host) {
            (Some(socket), _) => {
                cmd.arg(format!("--socket={}", socket.display()));
            }
            (None, host) => {
                cmd.arg(format!("--host={}", host.as_deref().unwrap_or("127.0.0.1")));
                cmd.arg(format!("--port={}", t.port));
                // Without it a host of `localhost` means the default socket.
                cmd.arg("--protocol=TCP");
            }
        }
        if let Some(u) = &t.user {
            cmd.arg(format!("--user={u}"));
        }
        if let Some(p) = &t.password {
            cmd.env("MYSQL_PWD", p.expose());
        }
        Ok(cmd)
    }

    /// The plan's database, if it names one.
    pub fn database(&self) -> Option<String> {
        self.target().ok().and_then(|t| t.database)
    }

    /// Runs one statement with `mariadb` and returns its rows, fields split
    /// on tabs (`--batch --raw --skip-column-names`).
    pub fn query(&self, sql: &str) -> Result<Vec<Vec<String>>, SourceError> {
        let mut cmd = self.command("mariadb")?;
        cmd.args([
            "--batch",
            "--raw",
            "--skip-column-names",
            "--connect-timeout=10",
            "-e",
            sql,
        ]);
        let out = run(cmd, "mariadb")?;
        Ok(String::from_utf8_lossy(&out)
            .lines()
            .map(|l| l.split('\t').map(str::to_owned).collect())
            .collect())
    }

    /// The first field of the first row.
    pub fn value(&self, sql: &str) -> Result<String, SourceError> {
        self.query(sql)?
            .into_iter()
            .next()
            .and_then(|r| r.into_iter().next())
            .ok_or_else(|| SourceError::Database {
                what: "mariadb".into(),
                detail: format!("no answer to {sql}"),
            })
    }
}

/// `HOLDFAST_MARIADB_BIN`, else `None` (search `PATH`).
pub fn bin_dir() -> Option<PathBuf> {
    std::env::var_os("HOLDFAST_MARIADB_BIN").map(PathBuf::from)
}

pub fn program_path(bin_dir: Option<&Path>, program: &str) -> PathBuf {
    match bin_dir {
        Some(d) => d.join(program),
        None => PathBuf::from(program),
    }
}

/// Runs a program to its end, returning stdout, or its stderr as the error.
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
            "cannot run {}: {e} (install MariaDB's programs: Debian packages mariadb-client and mariadb-backup; or set HOLDFAST_MARIADB_BIN to their folder)",
            cmd.get_program().to_string_lossy()
        ),
    }
}

/// Where `restore --dump … --into URL` goes.
#[derive(Debug)]
pub struct IntoUrl {
    /// A client for the server, with no database; the password, if any,
    /// from holdfast's own `MYSQL_PWD`.
    pub client: MariaClient,
    pub database: Option<String>,
    /// The URL itself carried a password (which the caller refuses: it
    /// would be on holdfast's command line).
    pub has_password: bool,
}

/// Parses an `--into` URL (`mysql://user@host:port/database`, or a
/// `?socket=` parameter).
pub fn into_url(url: &str) -> Result<IntoUrl, SourceError> {
    let t = parse_url(url)?;
    let password = std::env::var("MYSQL_PWD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(|p| Password::Value(Secret::new(p)));
    Ok(IntoUrl {
        client: MariaClient::new(DbConnection {
            host: t.host,
            port: t.port,
            socket: t.socket,
            user: t.user,
            database: None,
            dsn: None,
            password,
        }),
        database: t.database,
        has_password: t.password.is_some(),
    })
}

/// `mysql://user:password@host:port/database` (or `mariadb://`); a
/// `?socket=/path` query parameter instead of a host.
fn parse_url(url: &str) -> Result<Target, SourceError> {
    let bad = |why: &str| SourceError::Database {
        what: "connection URL".into(),
        detail: format!("{why} (write mysql://user:password@host:port/database)"),
    };
    let parsed = url::Url::parse(url).map_err(|e| bad(&e.to_string()))?;
    if !matches!(parsed.scheme(), "mysql" | "mariadb") {
        return Err(bad("it does not start with mysql:// or mariadb://"));
    }
    let decode = crate::secret::percent_decode;
    let user = (!parsed.username().is_empty()).then(|| decode(parsed.username()));
    let password = parsed.password().map(|p| Secret::new(decode(p)));
    let database = parsed
        .path()
        .trim_start_matches('/')
        .split('/')
        .next()
        .filter(|d| !d.is_empty())
        .map(decode);
    let mut socket = None;
    for (k, v) in parsed.query_pairs() {
        match &*k {
            "socket" => socket = Some(PathBuf::from(v.into_owned())),
            other => return Err(bad(&format!("unknown parameter `{other}`"))),
        }
    }
    Ok(Target {
        host: parsed
            .host_str()
            .filter(|h| !h.is_empty())
            .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string()),
        port: parsed.port().unwrap_or(3306),
        socket,
        user,
        database,
        password,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_gives_its_parts_and_keeps_the_password_apart() {
        let t = parse_url("mysql://backup:p%40ss@db.example:3307/app").unwrap();
        assert_eq!(t.host.as_deref(), Some("db.example"));
        assert_eq!(t.port, 3307);
        assert_eq!(t.user.as_deref(), Some("backup"));
        assert_eq!(t.database.as_deref(), Some("app"));
        assert_eq!(t.password.unwrap().expose(), "p@ss");
        let t = parse_url("mariadb://root@localhost/?socket=/run/mysqld/mysqld.sock").unwrap();
        assert_eq!(t.socket, Some(PathBuf::from("/run/mysqld/mysqld.sock")));
        assert!(parse_url("postgres://x@y/z").is_err());
    }

    #[test]
    fn the_password_is_in_the_environment_and_no_argument() {
        let client = MariaClient::new(DbConnection {
            host: Some("127.0.0.1".into()),
            port: 3307,
            socket: None,
            user: Some("backup".into()),
            database: None,
            dsn: None,
            password: Some(Password::Value(Secret::new("hunter2"))),
        });
        let cmd = client.command("mariadb").unwrap();
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], "--no-defaults");
        assert!(args.iter().all(|a| !a.contains("hunter2")), "{args:?}");
        assert!(args.contains(&"--port=3307".to_string()), "{args:?}");
        let pwd = cmd
            .get_envs()
            .find(|(k, _)| *k == "MYSQL_PWD")
            .and_then(|(_, v)| v)
            .unwrap();
        assert_eq!(pwd, "hunter2");
    }
}
