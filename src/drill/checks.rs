//! The checks a drill runs on the restored copy: the plan's SQL checks
//! (SQLite through rusqlite on the restored file, read-only; PostgreSQL over
//! a real connection to the scratch server) and file checks, plus built-ins
//! (`PRAGMA integrity_check`, `pg_amcheck`).

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::process::Command;

use super::report::CheckResult;
use crate::engine::scratch::Address;
use crate::plan::{CheckKind, DrillCheck, Expectation};

/// Whether `value` (a SQL check's first value) meets `expect`; the reason when not.
pub fn judge(value: Option<&str>, expect: &Expectation) -> Result<String, String> {
    let shown = value.unwrap_or("NULL");
    if let Some(want) = &expect.equals {
        if value != Some(want.as_str()) {
            return Err(format!("returned {shown:?}, expected {want:?}"));
        }
    }
    if expect.at_least.is_some() || expect.at_most.is_some() {
        let n: i64 = value
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("returned {shown:?}, not an integer"))?;
        if let Some(min) = expect.at_least {
            if n < min {
                return Err(format!("returned {n}, expected at least {min}"));
            }
        }
        if let Some(max) = expect.at_most {
            if n > max {
                return Err(format!("returned {n}, expected at most {max}"));
            }
        }
    }
    Ok(format!("returned {shown:?}"))
}

fn result(check: &DrillCheck, kind: &str, outcome: Result<String, String>) -> CheckResult {
    let (passed, detail) = match outcome {
        Ok(d) => (true, d),
        Err(d) => (false, d),
    };
    CheckResult {
        name: check.name.clone(),
        kind: kind.into(),
        passed,
        detail,
    }
}

/// Where [`sqlite_checks`] leaves its connection's interrupt handle.
pub type InterruptSlot = Arc<Mutex<Option<rusqlite::InterruptHandle>>>;

/// Interrupts the SQLite checks when dropped: a drill stopped at
/// `max_duration` or cancelled (SIGTERM, the daemon's shutdown) must not
/// leave a query running on a blocking thread, which would also keep the
/// process from exiting. Harmless once the checks have ended.
pub struct InterruptOnDrop(pub InterruptSlot);

impl Drop for InterruptOnDrop {
    fn drop(&mut self) {
        if let Some(h) = self.0.lock().ok().and_then(|mut g| g.take()) {
            h.interrupt();
        }
    }
}

/// `PRAGMA integrity_check` and the plan's SQL checks on a restored SQLite
/// file, opened read-only (blocking: run on a blocking thread).
pub fn sqlite_checks(db: &Path, checks: &[DrillCheck], slot: &InterruptSlot) -> Vec<CheckResult> {
    use rusqlite::OpenFlags;
    let mut out = Vec::new();
    let conn = match rusqlite::Connection::open_with_flags(
        db,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    ) {
        Ok(c) => c,
        Err(e) => {
            out.push(CheckResult {
                name: "integrity_check".into(),
                kind: "builtin".into(),
                passed: false,
                detail: format!("unable to open the restored database {}: {e}", db.display()),
            });
            return out;
        }
    };
    if let Ok(mut g) = slot.lock() {
        *g = Some(conn.get_interrupt_handle());
    }
    let integrity = conn
        .prepare("PRAGMA integrity_check")
        .and_then(|mut s| {
            s.query_map([], |r| r.get::<_, String>(0))?
                .collect::<Result<Vec<_>, _>>()
        })
        .map_err(|e| e.to_string())
        .and_then(|rows| {
            if rows == ["ok"] {
                Ok("ok".to_string())
            } else {
                Err(rows.join("; "))
            }
        });
    out.push(CheckResult {
        name: "integrity_check".into(),
        kind: "builtin".into(),
        passed: integrity.is_ok(),
        detail: integrity.unwrap_or_else(|e| e),
    });
    for check in checks {
        let CheckKind::Sql { query, expect } = &check.kind else {
            continue;
        };
        let value = conn
            .query_row(query, [], |r| {
                Ok(match r.get_ref(0)? {
                    rusqlite::types::ValueRef::Null => None,
                    rusqlite::types::ValueRef::Integer(i) => Some(i.to_string()),
                    rusqlite::types::ValueRef::Real(f) => Some(f.to_string()),
                    rusqlite::types::ValueRef::Text(t) => {
                        Some(String::from_utf8_lossy(t).into_owned())
                    }
                    rusqlite::types::ValueRef::Blob(b) => Some(hex::encode(b)),
                })
            })
            .map_err(|e| format!("query failed: {e}"));
        out.push(result(
            check,
            "sql",
            value.and_then(|v| judge(v.as_deref(), expect)),
        ));
    }
    out
}

/// The plan's file checks on a restored tree.
pub fn file_checks(root: &Path, checks: &[DrillCheck]) -> Vec<CheckResult> {
    checks
        .iter()
        .filter_map(|check| {
            let CheckKind::File { path } = &check.kind else {
                return None;
            };
            let full = root.join(path);
            let outcome = match std::fs::symlink_metadata(&full) {
                Ok(m) => Ok(format!("{} exists ({} bytes)", path.display(), m.len())),
                Err(e) => Err(format!(
                    "{} is not in the restored tree: {e}",
                    path.display()
                )),
            };
            Some(result(check, "file", outcome))
        })
        .collect()
}

const QUERY_DEADLINE: Duration = Duration::from_secs(600);

/// Runs `sql` with psql on the scratch server, in `database`; the first
/// column of the first row.
async fn psql_value(
    bin: Option<&Path>,
    at: &Address,
    database: &str,
    sql: &str,
) -> Result<Option<String>, String> {
    let mut cmd = Command::new(crate::engine::postgres::client::pg_program(bin, "psql"));
    cmd.args(["-XAtq", "-v", "ON_ERROR_STOP=1", "-F", "|", "-h"])
        .arg(&at.host)
        .args(["-p", &at.port.to_string(), "-d", database, "-c"])
        .arg(sql)
        .env("PGCONNECT_TIMEOUT", "5");
    let out = crate::engine::process::output(cmd, QUERY_DEADLINE)
        .await
        .map_err(|e| format!("psql: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "query failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(text
        .lines()
        .next()
        .map(|l| l.split('|').next().unwrap_or("").to_string()))
}

/// The plan's SQL checks on a scratch PostgreSQL server, in the plan's
/// database (`postgres` when the plan names none).
pub async fn postgres_checks(
    bin: Option<&Path>,
    at: &Address,
    database: &str,
    checks: &[DrillCheck],
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for check in checks {
        let CheckKind::Sql { query, expect } = &check.kind else {
            continue;
        };
        let value = psql_value(bin, at, database, query).await;
        out.push(result(
            check,
            "sql",
            value.and_then(|v| judge(v.as_deref(), expect)),
        ));
    }
    out
}

/// `pg_amcheck --all` on the scratch server (B-tree and heap checks of every
/// database); `None` when pg_amcheck is not installed (the caller notes the skip).
pub async fn pg_amcheck(bin: Option<&Path>, at: &Address) -> Option<CheckResult> {
    let program = crate::engine::postgres::client::pg_program(bin, "pg_amcheck");
    let mut cmd = Command::new(&program);
    cmd.args(["--all", "--install-missing", "-h"])
        .arg(&at.host)
        .args(["-p", &at.port.to_string()])
        .env("PGCONNECT_TIMEOUT", "5");
    let out = match crate::engine::process::output(cmd, QUERY_DEADLINE).await {
        Ok(o) => o,
        Err(e) if e.to_string().contains("No such file") || e.to_string().contains("not found") => {
            return None
        }
        Err(e) => {
            return Some(CheckResult {
                name: "pg_amcheck".into(),
                kind: "builtin".into(),
                passed: false,
                detail: format!("{}: {e}", program.display()),
            })
        }
    };
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let said: String = said.trim().chars().take(2000).collect();
    Some(CheckResult {
        name: "pg_amcheck".into(),
        kind: "builtin".into(),
        passed: out.status.success(),
        detail: if out.status.success() {
            "no corruption found in any database".into()
        } else {
            format!("pg_amcheck exited {}: {said}", out.status)
        },
    })
}

/// The plan's SQL checks on a scratch MariaDB server (in `database` when the
/// plan names one); MariaDB's `NULL` is `NULL` as in the other engines.
pub async fn mariadb_checks(
    server: &dyn crate::engine::scratch::ScratchServer,
    database: Option<&str>,
    checks: &[DrillCheck],
) -> Vec<CheckResult> {
    let mut out = Vec::new();
    for check in checks {
        let CheckKind::Sql { query, expect } = &check.kind else {
            continue;
        };
        let sql = match database {
            Some(db) => format!("USE `{}`; {query}", db.replace('`', "``")),
            None => query.clone(),
        };
        let value = server.query(&sql).await.map(|rows| {
            rows.into_iter()
                .next()
                .and_then(|r| r.into_iter().next())
                .filter(|v| v != "NULL")
        });
        out.push(result(
            check,
            "sql",
            value.and_then(|v| judge(v.as_deref(), expect)),
        ));
    }
    out
}

/// `CHECK TABLE` of every table of every database but the server's own
/// (`information_schema`, `performance_schema`, `sys`): the built-in check
/// of a MariaDB drill.
pub async fn mariadb_check_tables(
    server: &dyn crate::engine::scratch::ScratchServer,
) -> CheckResult {
    let failed = |detail: String| CheckResult {
        name: "check_table".into(),
        kind: "builtin".into(),
        passed: false,
        detail,
    };
    let tables = match server
        .query(
            "SELECT CONCAT('`', REPLACE(table_schema, '`', '``'), '`.`', REPLACE(table_name, '`', '``'), '`') \
             FROM information_schema.tables WHERE table_type = 'BASE TABLE' \
             AND table_schema NOT IN ('information_schema', 'performance_schema', 'sys') \
             ORDER BY table_schema, table_name",
        )
        .await
    {
        Ok(rows) => rows
            .into_iter()
            .filter_map(|r| r.into_iter().next())
            .collect::<Vec<_>>(),
        Err(e) => return failed(format!("listing the tables failed: {e}")),
    };
    let mut bad = Vec::new();
    for group in tables.chunks(50) {
        match server
            .query(&format!("CHECK TABLE {}", group.join(", ")))
            .await
        {
            // Table, Op, Msg_type, Msg_text: an `error` row, or a last
            // `status` row that is not OK, is a damaged table.
            Ok(rows) => {
                for r in rows {
                    if r.len() >= 4 && (r[2] == "error" || (r[2] == "status" && r[3] != "OK")) {
                        bad.push(format!("{}: {}", r[0], r[3]));
                    }
                }
            }
            Err(e) => bad.push(format!("CHECK TABLE failed: {e}")),
        }
    }
    if bad.is_empty() {
        CheckResult {
            name: "check_table".into(),
            kind: "builtin".into(),
            passed: true,
            detail: format!("CHECK TABLE found {} table(s) OK", tables.len()),
        }
    } else {
        let shown: Vec<_> = bad.iter().take(10).cloned().collect();
        failed(format!(
            "CHECK TABLE found {} problem(s): {}",
            bad.len(),
            shown.join("; ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expectations_are_judged_as_documented() {
        let e = |equals: Option<&str>, at_least, at_most| Expectation {
            equals: equals.map(str::to_owned),
            at_least,
            at_most,
        };
        assert!(judge(Some("ok"), &e(Some("ok"), None, None)).is_ok());
        assert!(judge(Some("no"), &e(Some("ok"), None, None)).is_err());
        assert!(judge(Some("5"), &e(None, Some(5), Some(5))).is_ok());
        let low = judge(Some("4"), &e(None, Some(5), None)).unwrap_err();
        assert!(low.contains("at least 5"), "{low}");
        assert!(judge(Some("x"), &e(None, Some(1), None)).is_err());
        assert!(judge(None, &e(None, Some(1), None)).is_err());
        assert!(judge(None, &Expectation::default()).is_ok());
    }
}
