//! Shared test helpers: deterministic data, a synthetic source, the S3 test
//! server, SQLite databases; and in modules the built binary (`bin`), the
//! daemon as a process (`daemon`), files and trees (`files`), a PostgreSQL
//! cluster of the test's own (`postgres`), an S3 server of the test's own
//! (`s3_server`), a webhook receiver for alerts (`webhook`).
#![allow(dead_code)]

pub mod bin;
pub mod daemon;
pub mod files;
pub mod mariadb;
pub mod postgres;
pub mod s3_server;
pub mod webhook;

use std::io::Read;

use holdfast::repository::source::{EntryMeta, EntrySink, Source, SourceError, SourceMetadata};

/// Deterministic pseudo-random bytes (xorshift), half of them text-like so
/// they compress like real data.
pub fn data(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let words: [&[u8]; 8] = [
        b"customer ",
        b"order ",
        b"42 ",
        b"paid ",
        b"2026-11-26 ",
        b"refund ",
        b"shipped ",
        b"\n",
    ];
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(3) {
            out.extend_from_slice(&x.to_le_bytes());
        } else {
            out.extend_from_slice(words[(x >> 8) as usize % words.len()]);
        }
    }
    out.truncate(len);
    out
}

/// A source of named in-memory files, for repository-level tests.
pub struct MemSource {
    pub files: Vec<(String, Vec<u8>)>,
}

impl Source for MemSource {
    fn kind(&self) -> holdfast::plan::SourceKind {
        holdfast::plan::SourceKind::Files
    }
    fn estimate_bytes(&self) -> Option<u64> {
        Some(self.files.iter().map(|(_, d)| d.len() as u64).sum())
    }
    fn snapshot(&mut self, sink: &mut dyn EntrySink) -> Result<SourceMetadata, SourceError> {
        sink.dir(&EntryMeta {
            path: ".".into(),
            mode: 0o755,
            mtime_ns: Some(1_700_000_000_000_000_000),
            stamp: None,
        })?;
        for (name, content) in &self.files {
            let mut r: &[u8] = content;
            sink.file(
                &EntryMeta {
                    path: name.clone(),
                    mode: 0o640,
                    mtime_ns: Some(1_700_000_000_123_456_789),
                    stamp: None,
                },
                &mut r as &mut dyn Read,
            )?;
        }
        Ok(SourceMetadata::new())
    }
}

/// The S3 test server `scripts/s3-server start` runs (scripts/test starts
/// it). S3 tests never skip: without a server they fail and say how to start one.
pub struct S3Env {
    pub endpoint: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub fn s3_env() -> S3Env {
    let mut vars: std::collections::HashMap<String, String> = std::env::vars().collect();
    if !vars.contains_key("HOLDFAST_S3_ENDPOINT") {
        let file = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/s3-server/env");
        if let Ok(text) = std::fs::read_to_string(&file) {
            for line in text.lines() {
                if let Some((k, v)) = line.trim().trim_start_matches("export ").split_once('=') {
                    vars.insert(k.to_string(), v.trim_matches(['"', '\'']).to_string());
                }
            }
        }
    }
    let get = |k: &str| {
        vars.get(k).cloned().unwrap_or_else(|| {
            panic!("{k} is not set and target/s3-server/env has no S3 server: run `scripts/s3-server start` (scripts/test does); S3 tests never skip")
        })
    };
    S3Env {
        endpoint: get("HOLDFAST_S3_ENDPOINT"),
        access_key_id: get("AWS_ACCESS_KEY_ID"),
        secret_access_key: get("AWS_SECRET_ACCESS_KEY"),
    }
}

/// The variables an `env` file of `scripts/s3-server start` exports; none
/// when it cannot be read.
pub fn env_file(file: &std::path::Path) -> std::collections::HashMap<String, String> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .filter_map(|line| line.trim().trim_start_matches("export ").split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches(['"', '\'']).to_string()))
        .collect()
}

/// A bucket name no other test uses: `hf-<hint>-<random>`.
pub fn bucket_name(hint: &str) -> String {
    let mut r = [0u8; 4];
    getrandom::fill(&mut r).unwrap();
    let hint: String = hint
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    format!("hf-{hint}-{}", hex::encode(r))
}

/// Store settings for `bucket` on the test server, with static credentials.
pub fn s3_config(bucket: &str, prefix: &str) -> holdfast::store::s3::S3Config {
    use holdfast::store::s3::{S3Config, SecretSource, StaticCredentials};
    let env = s3_env();
    let mut c = S3Config::new(bucket, prefix);
    c.endpoint = Some(env.endpoint);
    c.region = Some("us-east-1".into());
    c.path_style = true;
    c.credentials = Some(StaticCredentials {
        access_key_id: env.access_key_id,
        secret: SecretSource::Value(holdfast::secret::Secret::new(env.secret_access_key)),
    });
    c
}

/// A new bucket on the test server, with Object Lock unless `object_lock` is false.
pub async fn s3_bucket(hint: &str, object_lock: bool) -> holdfast::store::s3::S3Store {
    let config = s3_config(&bucket_name(hint), "repo");
    let store = holdfast::store::s3::S3Store::open(config).await.unwrap();
    store.create_bucket(object_lock).await.unwrap();
    store
}

/// A database of `rows` orders with mixed text and numbers.
pub fn make_db(path: &std::path::Path, rows: usize) {
    let conn = rusqlite::Connection::open(path).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS orders(id INTEGER PRIMARY KEY, customer TEXT, amount REAL, note TEXT);",
    )
    .unwrap();
    add_rows(&conn, rows);
}

pub fn add_rows(conn: &rusqlite::Connection, rows: usize) {
    let start: i64 = conn
        .query_row("SELECT coalesce(max(id), 0) FROM orders", [], |r| r.get(0))
        .unwrap();
    let tx = conn.unchecked_transaction().unwrap();
    {
        let mut stmt = tx
            .prepare("INSERT INTO orders(id, customer, amount, note) VALUES (?, ?, ?, ?)")
            .unwrap();
        for i in 0..rows as i64 {
            let id = start + i + 1;
            let note = String::from_utf8_lossy(&data(id as u64, 200)).into_owned();
            stmt.execute(rusqlite::params![
                id,
                format!("customer-{}", id % 977),
                id as f64 * 1.25,
                note
            ])
            .unwrap();
        }
    }
    tx.commit().unwrap();
}

pub fn checksum(db: &std::path::Path) -> (i64, String) {
    let conn = rusqlite::Connection::open(db).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM orders", [], |r| r.get(0))
        .unwrap();
    let mut stmt = conn
        .prepare("SELECT id, customer, amount, note FROM orders ORDER BY id")
        .unwrap();
    let mut h = sha2::Sha256::default();
    use sha2::Digest;
    let mut rows = stmt.query([]).unwrap();
    while let Some(r) = rows.next().unwrap() {
        let id: i64 = r.get(0).unwrap();
        let c: String = r.get(1).unwrap();
        let a: f64 = r.get(2).unwrap();
        let note: String = r.get(3).unwrap();
        h.update(format!("{id}|{c}|{a}|{note}\n"));
    }
    (n, hex::encode(h.finalize()))
}

/// Every table of the SQLite database `db` with its row count and a checksum
/// over its rows in a fixed order: equal strings mean equal contents.
pub fn sqlite_state(db: &std::path::Path) -> String {
    use sha2::Digest;
    let conn = rusqlite::Connection::open(db).unwrap();
    let tables: Vec<String> = conn
        .prepare("SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    tables
        .iter()
        .map(|t| {
            let all = format!("SELECT * FROM \"{t}\"");
            let columns = conn.prepare(&all).unwrap().column_count();
            let order: Vec<String> = (1..=columns).map(|i| i.to_string()).collect();
            let mut stmt = conn
                .prepare(&format!("{all} ORDER BY {}", order.join(", ")))
                .unwrap();
            let mut rows = stmt.query([]).unwrap();
            let (mut n, mut h) = (0, sha2::Sha256::default());
            while let Some(r) = rows.next().unwrap() {
                for i in 0..columns {
                    h.update(format!("{:?}|", r.get_ref(i).unwrap()));
                }
                h.update("\n");
                n += 1;
            }
            format!("{t}: {n} rows, sha256 {}", hex::encode(h.finalize()))
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A port nothing listens on now, for a server the test starts.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The tests run as root (CI does): faults that need setpriv or mount.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(1) == Some("0"))
}

/// verify of every snapshot of `plan` finds no problem.
pub async fn assert_verifies(
    repo: &holdfast::repository::Repository,
    plan: &holdfast::plan::PlanName,
) {
    let report = holdfast::repository::verify::verify(
        repo,
        plan,
        None,
        None,
        holdfast::progress::ProgressMode::Quiet,
    )
    .await
    .unwrap();
    assert!(report.ok(), "{:?}", report.problems);
}
