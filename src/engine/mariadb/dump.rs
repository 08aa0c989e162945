//! Restoring one logical dump (`dumps/<database>.sql`, `mariadb-dump
//! --single-transaction --routines --events --triggers <database>`) into a
//! running server with `mariadb`, for a restore across server versions or
//! of one database apart from the rest.
//!
//! The dump names no database (no `CREATE DATABASE`, no `USE`), so it loads
//! into whichever the `--into` URL names: created if missing, refused if it
//! has tables. It is checked whole first, then streamed with every chunk
//! checked again ([`crate::engine::dump`]). MariaDB cannot load a dump in
//! one transaction (its DDL commits), so when anything fails part way, a
//! database this restore created is dropped again; one that existed (empty)
//! before is named in the error as holding part of the dump.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use super::backup::DUMPS_PREFIX;
use super::client::{into_url, spawn_error, MariaClient};
use super::MariaError;
use crate::engine::dump::{check_whole, checking_reader, feed, find_dump, DumpRestoreReport};
use crate::engine::scratch::recovery_deadline;
use crate::engine::DumpRequest;
use crate::plan::PlanName;
use crate::progress::Progress;
use crate::repository::materialize::MaterializeError;
use crate::repository::read::{ChunkReader, ReadError};
use crate::repository::Repository;

/// Restores the logical dump of `req.database` from a snapshot into the
/// database the URL `req.into` names.
pub async fn restore_dump(
    repo: &Repository,
    plan: &PlanName,
    req: &DumpRequest,
) -> Result<DumpRestoreReport, MariaError> {
    let (database, into) = (req.database.as_str(), req.into.as_str());
    let started = Instant::now();
    let snap = repo.find_snapshot(plan, &req.snapshot).await?;
    let manifest = repo.load_manifest(&snap).await?;
    let entry = find_dump(&manifest, DUMPS_PREFIX, database, ".sql").map_err(|have| {
        MariaError::NoDump {
            snapshot: snap.id.short(),
            plan: plan.to_string(),
            database: database.to_string(),
            have,
        }
    })?;
    let not_url = || MariaError::IntoNotUrl {
        into: redact(into),
        database: database.to_string(),
    };
    if !into.starts_with("mysql://") && !into.starts_with("mariadb://") {
        return Err(not_url());
    }
    let target = into_url(into).map_err(|_| not_url())?;
    if target.has_password {
        return Err(MariaError::IntoPassword { into: redact(into) });
    }
    let Some(target_db) = target.database.clone() else {
        return Err(MariaError::IntoNoDatabase { into: redact(into) });
    };
    let shown = format!("{}/{target_db}", target.client.describe());
    if entry.size.is_none() {
        return Err(MaterializeError::UnsafeEntry {
            manifest: snap.key.clone(),
            path: entry.path.clone(),
            why: "it has no size, so the dump cannot be checked whole before mariadb runs it"
                .into(),
            target: PathBuf::from(format!("database {target_db}")),
        }
        .into());
    }
    let reader = checking_reader(repo, &manifest).await?;
    let total = entry.size.unwrap_or_default();
    // Each byte is read twice: once to check, once to restore.
    let progress = Progress::new("restore", Some(total.saturating_mul(2)), req.progress);
    let snapshot = snap.id.short();
    let client = target.client;
    let db = target_db.clone();
    // mariadb and the pipe into it block: one thread.
    tokio::task::spawn_blocking(move || {
        let read_err = |source: ReadError| -> MariaError {
            MaterializeError::Read {
                snapshot: snapshot.clone(),
                target: PathBuf::from(format!("database {db}")),
                source: Box::new(source),
            }
            .into()
        };
        check_whole(&reader, &entry, &progress).map_err(read_err)?;
        let created = prepare_database(&client, &db)?;
        let loaded = load(&client, &db, &reader, &entry, progress).map_err(|e| match e {
            Load::Read(source) => read_err(source),
            Load::Failed(e) => e,
        });
        if let Err(e) = loaded {
            return Err(match (created, drop_database(&client, &db)) {
                (true, Ok(())) => e,
                (true, Err(why)) => MariaError::Program {
                    program: "mariadb".into(),
                    detail: format!("{e}; and dropping the database {db} this restore created failed: {why}: drop it by hand"),
                },
                (false, _) => MariaError::Program {
                    program: "mariadb".into(),
                    detail: format!("{e}; database {db} existed before and may now hold part of the dump"),
                },
            });
        }
        Ok(())
    })
    .await
    .expect("mariadb feeder panicked")?;
    Ok(DumpRestoreReport {
        plan: plan.to_string(),
        snapshot: snap.id,
        snapshot_time: manifest.started_at,
        database: database.to_string(),
        into: shown,
        bytes: total,
        duration_seconds: started.elapsed().as_secs_f64(),
    })
}

/// `name` as a MariaDB identifier.
fn ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `name` as a MariaDB string literal.
fn literal(name: &str) -> String {
    format!("'{}'", name.replace('\\', "\\\\").replace('\'', "''"))
}

/// Creates `db` if missing (true) or checks it has no tables (false).
fn prepare_database(client: &MariaClient, db: &str) -> Result<bool, MariaError> {
    let q = |sql: &str| {
        client.query(sql).map_err(|e| MariaError::Program {
            program: "mariadb".into(),
            detail: e.to_string(),
        })
    };
    let exists = q(&format!(
        "SELECT COUNT(*) FROM information_schema.schemata WHERE schema_name = {}",
        literal(db)
    ))?;
    if exists.first().and_then(|r| r.first()).map(String::as_str) == Some("0") {
        q(&format!("CREATE DATABASE {}", ident(db)))?;
        return Ok(true);
    }
    let tables = q(&format!(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = {}",
        literal(db)
    ))?;
    if tables.first().and_then(|r| r.first()).map(String::as_str) != Some("0") {
        return Err(MariaError::HasTables {
            database: db.to_string(),
        });
    }
    Ok(false)
}

fn drop_database(client: &MariaClient, db: &str) -> Result<(), String> {
    client
        .query(&format!("DROP DATABASE {}", ident(db)))
        .map(|_| ())
        .map_err(|e| e.to_string())
}

enum Load {
    Read(ReadError),
    Failed(MariaError),
}

/// Streams the dump into `mariadb --database=<db>`, every chunk checked
/// before it is written; its input ends only after the whole file matched.
fn load(
    client: &MariaClient,
    db: &str,
    reader: &ChunkReader,
    entry: &crate::repository::ManifestEntry,
    progress: Progress,
) -> Result<(), Load> {
    let program = |detail: String| {
        Load::Failed(MariaError::Program {
            program: "mariadb".into(),
            detail,
        })
    };
    let mut cmd = client
        .command("mariadb")
        .map_err(|e| program(e.to_string()))?;
    // --binary-mode: a dump's string literals may hold any byte.
    cmd.args(["--binary-mode", &format!("--database={db}")]);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .map_err(|e| program(spawn_error("mariadb", &cmd, e).to_string()))?;
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_reader = std::thread::spawn(move || {
        // Read to the end (a full pipe would stop mariadb), keep the start.
        let (mut kept, mut buf) = (Vec::new(), [0u8; 8192]);
        while let Ok(n) = std::io::Read::read(&mut stderr, &mut buf) {
            if n == 0 {
                break;
            }
            let room = (64 * 1024usize).saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        String::from_utf8_lossy(&kept).into_owned()
    });
    let (read, status) = feed(reader, entry, &mut child, progress, recovery_deadline());
    let status = status.map_err(|e| program(e.to_string()))?;
    let stderr = stderr_reader.join().unwrap_or_default();
    let failed = || {
        Load::Failed(MariaError::Load {
            database: db.to_string(),
            status: status.to_string(),
            stderr: stderr.trim().to_string(),
        })
    };
    match read {
        // mariadb gave up first (the write then failed on the closed pipe):
        // its own error says why.
        Err(ReadError::Sink { .. }) if status.code().is_some_and(|c| c != 0) => Err(failed()),
        Err(e) => Err(Load::Read(e)),
        Ok(()) if !status.success() => Err(failed()),
        Ok(()) => Ok(()),
    }
}

/// The URL without a password, for messages.
fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) if u.password().is_some() => {
            let _ = u.set_password(Some("***"));
            u.to_string()
        }
        Ok(u) => u.to_string(),
        Err(_) => "(not a URL)".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_quoted_as_identifiers_and_literals() {
        assert_eq!(ident("app"), "`app`");
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(literal(r"it's\x"), r"'it''s\\x'");
    }

    #[test]
    fn a_password_never_reaches_a_message() {
        let r = redact("mysql://root:hunter2@db:3306/app");
        assert!(!r.contains("hunter2"), "{r}");
        assert!(r.contains("***"), "{r}");
        assert_eq!(redact("not a url"), "(not a URL)");
    }
}
