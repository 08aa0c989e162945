//! Restoring one logical dump (`dumps/<database>.pgdump`, `pg_dump -Fc`)
//! into a running server with `pg_restore --single-transaction`: checked
//! whole first, then streamed with every chunk checked again
//! ([`crate::engine::dump`]); `pg_restore` is killed before its input ends
//! if anything fails, so its transaction rolls back (a `COMMIT` in a forged
//! chunk never reaches it: forged chunks fail the first pass).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Instant;

use super::backup::DUMPS_PREFIX;
use super::client::{redact_url, url_env, PgClient};
use super::PgError;
use crate::engine::dump::{check_whole, checking_reader, feed, find_dump};
use crate::engine::scratch::recovery_deadline;
use crate::engine::DumpRequest;
use crate::plan::PlanName;
use crate::progress::Progress;
use crate::repository::materialize::MaterializeError;
use crate::repository::read::{ChunkReader, ReadError};
use crate::repository::{ManifestEntry, Repository};
use crate::secret::Secret;

pub use crate::engine::dump::DumpRestoreReport;

/// Restores the logical dump of `database` from a snapshot (`latest` or an
/// id prefix) into the database named by the URL `into`, created if missing
/// and refused if it already has tables. `pg_restore` runs as one
/// transaction fed from the repository as chunks are verified; if any byte
/// fails its check the transaction is rolled back, so nothing half-restored
/// stays behind.
pub async fn restore_dump(
    repo: &Repository,
    plan: &PlanName,
    req: &DumpRequest,
) -> Result<DumpRestoreReport, PgError> {
    let (database, into) = (req.database.as_str(), req.into.as_str());
    let started = Instant::now();
    let snap = repo.find_snapshot(plan, &req.snapshot).await?;
    let manifest = repo.load_manifest(&snap).await?;
    let entry = find_dump(&manifest, DUMPS_PREFIX, database, ".pgdump").map_err(|have| {
        PgError::NoDump {
            snapshot: snap.id.short(),
            plan: plan.to_string(),
            database: database.to_string(),
            have,
        }
    })?;
    if !into.starts_with("postgres://") && !into.starts_with("postgresql://") {
        return Err(PgError::IntoNotUrl {
            into: redact_url(into),
            database: database.to_string(),
        });
    }
    let url = url_env(into)?;
    if url.iter().any(|(k, _)| *k == "PGPASSWORD") {
        // holdfast's own arguments are world-readable (`ps`, /proc/*/cmdline).
        return Err(PgError::IntoPassword {
            into: redact_url(into),
        });
    }
    let part = |k: &str| url.iter().find(|(v, _)| *v == k).map(|(_, x)| x.as_str());
    let target_db = part("PGDATABASE")
        .ok_or_else(|| PgError::IntoNoDatabase {
            into: redact_url(into),
        })?
        .to_string();
    // The password, if any, from holdfast's own environment (else libpq's
    // ~/.pgpass or PGPASSFILE), handed on in the client's environment.
    let password = std::env::var("PGPASSWORD")
        .ok()
        .filter(|p| !p.is_empty())
        .map(Secret::new);
    let target = PgClient::from_url(into).with_password(password);
    // Where it went, without the password.
    let shown = format!(
        "{}@{}:{}/{target_db}",
        part("PGUSER").unwrap_or(""),
        part("PGHOST").unwrap_or("localhost"),
        part("PGPORT").unwrap_or("5432")
    );
    if entry.size.is_none() {
        return Err(MaterializeError::UnsafeEntry {
            manifest: snap.key.clone(),
            path: entry.path.clone(),
            why: "it has no size, so the dump cannot be checked whole before pg_restore runs it"
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
    let db = target_db.clone();
    // psql, pg_restore and the pipe between them all block: one thread.
    tokio::task::spawn_blocking(move || {
        check_dump(&db, &snapshot, &reader, &entry, &progress)?;
        feed_pg_restore(&target, &db, &snapshot, reader, entry, progress)
    })
    .await
    .expect("pg_restore feeder panicked")?;
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

/// Reads the whole dump from the repository, every chunk checked against
/// its id and the file against its SHA-256, before anything reaches the
/// target server: a missing or damaged chunk fails here, with the target
/// not even connected to.
fn check_dump(
    target_db: &str,
    snapshot: &str,
    reader: &ChunkReader,
    entry: &ManifestEntry,
    progress: &Progress,
) -> Result<(), PgError> {
    check_whole(reader, entry, progress).map_err(|source| {
        MaterializeError::Read {
            snapshot: snapshot.to_string(),
            target: PathBuf::from(format!("database {target_db}")),
            source: Box::new(source),
        }
        .into()
    })
}

/// Creates the target database if missing (refuses one with tables), then
/// streams the dump into `pg_restore --single-transaction`, every chunk
/// checked before it is written; kills it before it can commit if anything
/// fails.
fn feed_pg_restore(
    target: &PgClient,
    target_db: &str,
    snapshot: &str,
    reader: ChunkReader,
    entry: ManifestEntry,
    progress: Progress,
) -> Result<(), PgError> {
    // Create it if missing (connected to the maintenance database), refuse it if it has tables.
    let admin = |sql: &str| target.query_in(Some("postgres"), sql);
    let exists = admin(&format!(
        "SELECT 1 FROM pg_database WHERE datname = '{}'",
        target_db.replace('\'', "''")
    ))?;
    if exists.is_empty() {
        admin(&format!(
            "CREATE DATABASE \"{}\"",
            target_db.replace('"', "\"\"")
        ))?;
    } else {
        let tables = target
            .query("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r','p') AND n.nspname NOT IN ('pg_catalog','information_schema') AND n.nspname NOT LIKE 'pg_toast%'")?;
        if tables.first().and_then(|r| r.first()).map(String::as_str) != Some("0") {
            return Err(PgError::HasTables {
                database: target_db.to_string(),
            });
        }
    }
    // The connection is in the environment (password included); `-d` only
    // says "restore into a database", naming it without anything secret.
    let mut cmd = target.command("pg_restore", Some(target_db))?;
    cmd.args([
        "--single-transaction",
        "--exit-on-error",
        "--no-owner",
        "-d",
    ]);
    cmd.arg(conninfo_dbname(target_db));
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| PgError::Program {
        program: "pg_restore".into(),
        detail: format!("cannot run it: {e} (set HOLDFAST_PG_BIN)"),
    })?;
    let mut stderr = child.stderr.take().expect("piped");
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
        text
    });
    // pg_restore commits only once its input ended, which happens only
    // after the whole dump matched its SHA-256.
    let (read, status) = feed(&reader, &entry, &mut child, progress, recovery_deadline());
    let status = status.map_err(|e| PgError::Program {
        program: "pg_restore".into(),
        detail: e.to_string(),
    })?;
    let stderr = stderr_reader.join().unwrap_or_default();
    let failed = || PgError::PgRestore {
        database: target_db.to_string(),
        status: status.to_string(),
        stderr: stderr.trim().to_string(),
    };
    match read {
        // pg_restore gave up first (our write then failed on the closed
        // pipe): its own error is the one that says why.
        Err(ReadError::Sink { .. }) if status.code().is_some_and(|c| c != 0) => {
            return Err(failed())
        }
        Err(source) => {
            return Err(MaterializeError::Read {
                snapshot: snapshot.to_string(),
                target: PathBuf::from(format!("database {target_db}")),
                source: Box::new(source),
            }
            .into())
        }
        Ok(()) if !status.success() => return Err(failed()),
        Ok(()) => {}
    }
    Ok(())
}

/// `dbname='…'` as a libpq connection string, for `pg_restore -d`: a bare
/// name holding `=` or starting with `postgres://` would be read as one.
fn conninfo_dbname(db: &str) -> String {
    format!("dbname='{}'", db.replace('\\', "\\\\").replace('\'', "\\'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_name_reaches_pg_restore_quoted_as_a_connection_string() {
        assert_eq!(conninfo_dbname("app"), "dbname='app'");
        assert_eq!(conninfo_dbname("a b=c"), "dbname='a b=c'");
        assert_eq!(conninfo_dbname(r"it's\x"), r"dbname='it\'s\\x'");
    }
}
