//! PostgreSQL base backups, WAL archiving and point-in-time restore against
//! real PostgreSQL 15 clusters of the tests' own (initdb into a temp folder,
//! a free port, `archive_command` = the built holdfast), never the shared
//! server on 5432. holdfast runs as the `postgres` OS user, as it would on a
//! database host: the server runs `wal-push` and `wal-fetch` as that user,
//! and they share the repository with `backup` and `restore`.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::bin::{command_as, exits_saying, json_of, s, said_by, text};
use common::files::{files_under, flip};
use common::free_port;
use common::postgres::{
    chown_postgres, now_at, pgbench, pgbench_command, sql_at, sql_in, state, state_in, Cluster,
    Restored,
};

/// `said` names archived segment `name` as corrupt or foreign because it
/// fails authentication.
fn names_unauthentic(said: &str, name: &str) {
    assert!(
        said.contains(&format!("wal/pg/{name} is corrupt or foreign")),
        "{said}"
    );
    assert!(said.contains("not authentic"), "{said}");
}

#[test]
fn wal_push_archives_each_segment_and_wal_fetch_restores_it_checked() {
    let pg = Cluster::start();
    let mut segments = Vec::new();
    for i in 1..=3 {
        segments.push(pg.fill_segment(i));
    }
    let last = segments.last().unwrap().clone();
    pg.wait_archived(&last, Duration::from_secs(60));
    let archived = pg.archived();
    for seg in &segments {
        assert!(archived.contains(seg), "{seg} missing from {archived:?}");
    }

    // wal-fetch gives back exactly what PostgreSQL wrote.
    let plan = s(&pg.plan).to_string();
    let original = pg.path(&format!("data/pg_wal/{last}"));
    let fetched = pg.path("fetched");
    let out = pg.holdfast(&["wal-fetch", "--plan", &plan, &last, s(&fetched)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        std::fs::read(&fetched).unwrap() == std::fs::read(&original).unwrap(),
        "fetched {last} differs from pg_wal"
    );

    // Pushing the same file again is fine (PostgreSQL retries after a crash).
    let out = pg.holdfast(&["wal-push", "--plan", &plan, s(&original), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["already_archived"], true);

    // The same name with other content is refused, loudly.
    std::fs::create_dir(pg.path("other")).unwrap();
    let forged = pg.path(&format!("other/{last}"));
    let mut bytes = std::fs::read(&original).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&forged, &bytes).unwrap();
    let out = pg.holdfast(&["wal-push", "--plan", &plan, s(&forged)]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("already archived with different content"),
        "{}",
        text(&out)
    );

    // Not archived: exit 1, so recovery ends there.
    let out = pg.holdfast(&[
        "wal-fetch",
        "--plan",
        &plan,
        "0000000100000000000000FF",
        s(&pg.path("nope")),
    ]);
    exits_saying(&out, 1, "not in the archive");
    assert!(!pg.path("nope").exists());

    // Corrupt in the repository: exit 126, so recovery stops instead of
    // ending early; the segment is named and nothing is written.
    let object = pg.path(&format!("repo/objects/wal/pg/{}", segments[0]));
    flip(&object, |len| len - 20, 0x55);
    let out = pg.holdfast(&[
        "wal-fetch",
        "--plan",
        &plan,
        &segments[0],
        s(&pg.path("bad")),
    ]);
    // Sealed: a flipped byte fails authentication before anything else, and
    // an object that fails it is foreign (a key holder did not write it as
    // it is): named, with why.
    names_unauthentic(&said_by(&out, 126), &segments[0]);
    assert!(!pg.path("bad").exists());
}

#[test]
fn nothing_is_lost_while_the_store_is_down() {
    let pg = Cluster::start();
    let first = pg.fill_segment(1);
    pg.wait_archived(&first, Duration::from_secs(60));

    // The store goes away: the repository cannot be written.
    let repo = pg.path("repo");
    let out = Command::new("chmod")
        .args(["000", s(&repo)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut during = Vec::new();
    for i in 0..3 {
        during.push(pg.fill_segment(i + 2));
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(
            Instant::now() < deadline,
            "archive_command never failed:\n{}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = pg.log();
    assert!(log.contains("archive command failed"), "{log}");
    assert!(
        log.contains("unable to archive"),
        "holdfast's reason reaches the server log:\n{log}"
    );

    // Back: PostgreSQL retries, and every segment arrives, in order, none skipped.
    let out = Command::new("chmod")
        .args(["700", s(&repo)])
        .output()
        .unwrap();
    assert!(out.status.success());
    let last = during.last().unwrap().clone();
    pg.wait_archived(&last, Duration::from_secs(120));
    let archived = pg.archived();
    let position = |seg: &str| u64::from_str_radix(&seg[16..], 16).unwrap();
    for seg in during.iter().chain(std::iter::once(&first)) {
        assert!(archived.contains(seg), "{seg} missing from {archived:?}");
    }
    let segs: Vec<u64> = archived
        .iter()
        .filter(|n| n.len() == 24)
        .map(|n| position(n))
        .collect();
    for pair in segs.windows(2) {
        assert_eq!(pair[1], pair[0] + 1, "a gap in the archive: {archived:?}");
    }
}

#[test]
fn a_dropped_table_comes_back_as_it_was_just_before_the_drop_and_a_second_restore_follows_the_new_timeline(
) {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    pg.pgbench_init(1);
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 5000) i");

    // A base backup while a pgbench write load runs.
    let mut load = pgbench_command(pg.port())
        .args(["-T", "6", "-c", "2", "-n", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let backup = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    assert!(load.wait().unwrap().success(), "pgbench load failed");
    let snap = backup["snapshot"].as_str().unwrap().to_string();

    // More writes after the backup; then T, the state at T, then the drop.
    pg.sql("INSERT INTO orders(note) SELECT 'after backup ' || i FROM generate_series(1, 1000) i; UPDATE pgbench_accounts SET abalance = abalance + 7 WHERE aid % 10 = 0");
    std::thread::sleep(Duration::from_millis(1100));
    let t = pg.now();
    let at_t = state(pg.port());
    assert!(at_t.contains("orders: 6000 rows"), "{at_t}");
    std::thread::sleep(Duration::from_millis(1100));
    pg.sql("DROP TABLE orders");
    pg.sql("UPDATE pgbench_accounts SET abalance = -1 WHERE aid <= 500; INSERT INTO pgbench_history(tid, bid, aid, delta, mtime) VALUES (1, 1, 1, 999, now())");
    pg.archive_now();

    // The window covers T.
    let listed = json_of(&pg.holdfast(&["snapshots", "--plan", &plan, "--json"]));
    let window = &listed[0]["restorable"];
    assert!(window["from"].as_str().unwrap() < t.as_str(), "{listed}");
    assert!(window["to"].as_str().unwrap() > t.as_str(), "{listed}");
    let text_listing = pg.holdfast(&["snapshots", "--plan", &plan]);
    assert!(
        text(&text_listing).contains("restorable window:"),
        "{}",
        text(&text_listing)
    );

    // Restore to T into a new data directory, started on its own port, as
    // the cluster's replacement (--archive: a new path is otherwise a
    // scratch copy that must not archive).
    let to = pg.path("restored");
    let port2 = free_port();
    let restored = Restored { data: to.clone() };
    let report = json_of(&pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--at",
        &t,
        "--to",
        s(&to),
        "--start",
        "--port",
        &port2.to_string(),
        "--archive",
        "--json",
    ]));
    assert_eq!(report["role"], "rebuild", "{report}");
    assert_eq!(report["archiving"], true, "{report}");
    assert_eq!(report["base_backup"].as_str().unwrap(), snap, "{report}");
    assert!(
        report["segments_checked"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["segments_replayed"].as_u64().unwrap() >= 1,
        "{report}"
    );
    assert!(
        report["reached"]
            .as_str()
            .unwrap()
            .contains("stopped before"),
        "{report}"
    );
    assert!(
        report["phases"]["recovery_seconds"].as_f64().is_some(),
        "{report}"
    );
    assert_eq!(
        state(port2),
        at_t,
        "the restored cluster differs from the state at {t}"
    );
    assert_eq!(sql_at(port2, "SELECT pg_is_in_recovery()"), "f");

    // The restored server is promoted on timeline 2 and archives into the
    // same plan. Writes there; T2; more writes; then a second restore to T2
    // from the same base backup must follow timeline 2, not 1.
    sql_at(
        port2,
        "CREATE TABLE refunds AS SELECT i AS id FROM generate_series(1, 300) i",
    );
    std::thread::sleep(Duration::from_millis(1100));
    let t2 = now_at(port2);
    let at_t2 = state(port2);
    std::thread::sleep(Duration::from_millis(1100));
    sql_at(
        port2,
        "DELETE FROM refunds WHERE id > 100; DROP TABLE pgbench_tellers",
    );
    let seg = sql_at(port2, "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "{seg}");
    let deadline = Instant::now() + Duration::from_secs(60);
    while !pg.archived().contains(&seg) {
        assert!(
            Instant::now() < deadline,
            "{seg} not archived: {:?}",
            pg.archived()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(pg.archived().contains(&"00000002.history".to_string()));
    drop(restored);

    let to2 = pg.path("restored-again");
    let port3 = free_port();
    let _again = Restored { data: to2.clone() };
    let report = json_of(&pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--at",
        &t2,
        "--to",
        s(&to2),
        "--start",
        "--port",
        &port3.to_string(),
        "--json",
    ]));
    assert_eq!(
        report["timeline_path"],
        serde_json::json!([1, 2]),
        "{report}"
    );
    assert_eq!(
        state(port3),
        at_t2,
        "the second restore differs from the state at {t2}"
    );
}

#[test]
fn after_rm_rf_of_pgdata_the_cluster_is_rebuilt_from_the_repository_alone() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    pg.pgbench_init(1);
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    // The hint after a base backup points at the newest state, not at the
    // base backup alone (which would stop at its end).
    assert!(
        text(&out).contains("restore with: holdfast restore --plan")
            && text(&out).contains("--latest --to DATADIR"),
        "{}",
        text(&out)
    );
    let out = pgbench(pg.port(), &["-t", "300", "-c", "2", "-n"]);
    assert!(out.status.success(), "{}", text(&out));
    pg.sql("CREATE TABLE customers AS SELECT i AS id, md5(i::text) AS email FROM generate_series(1, 2000) i");
    let before = state(pg.port());
    pg.archive_now();

    // The seed's wipe: the server dies and its data directory is deleted.
    pg.stop();
    let data = pg.path("data");
    std::fs::remove_dir_all(&data).unwrap();

    // Rebuilt into the same path, started on the same port.
    let port = pg.port();
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--latest",
        "--to",
        s(&data),
        "--start",
        "--port",
        &port.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("promoted") && said.contains("segment(s) replayed"),
        "{said}"
    );
    // Into the cluster's own data directory: a rebuild, which archives.
    assert!(
        said.contains("REBUILD of the cluster (restored into the cluster's own data directory"),
        "{said}"
    );
    assert!(
        said.contains("restart it under its service manager"),
        "{said}"
    );
    assert_eq!(state(port), before, "the rebuilt cluster lost data");
    let seg = sql_at(port, "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "{seg}");
    pg.wait_archived(&seg, Duration::from_secs(60));
}

/// Issue 13: with `wal-push --async` a pusher started by the first
/// `archive_command` stores the waiting segments ahead of the server, and
/// each `archive_command` answers from its record. What it stored is what a
/// point-in-time restore replays.
#[test]
fn async_archiving_stores_segments_ahead_of_the_server_and_a_restore_replays_them() {
    let pg = Cluster::start_async();
    let plan = s(&pg.plan).to_string();
    pg.pgbench_init(1);
    let out = pg.holdfast(&["backup", "--plan", &plan, "--json"]);
    assert!(out.status.success(), "{}", text(&out));

    // A burst of segments: the server waits on one archive_command at a
    // time while the pusher stores the rest ahead.
    let out = pgbench(pg.port(), &["-t", "500", "-c", "2", "-n"]);
    assert!(out.status.success(), "{}", text(&out));
    let mut last = String::new();
    for i in 1..=6 {
        last = pg.fill_segment(i);
    }
    pg.wait_archived(&last, Duration::from_secs(120));
    let before = state(pg.port());
    let t = pg.now();
    std::thread::sleep(Duration::from_millis(1100));
    pg.sql("DROP TABLE pgbench_accounts");
    pg.archive_now();
    assert_eq!(pg.sql("SELECT failed_count FROM pg_stat_archiver"), "0");

    // The pusher logged each file it stored; no record is left once the
    // server has asked for every file.
    let spool: Vec<_> = std::fs::read_dir(pg.path("spool/pg"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(spool.len(), 1, "one server, one folder: {spool:?}");
    let log = std::fs::read_to_string(spool[0].join("pusher.log")).unwrap();
    assert!(
        log.matches("WAL archived ahead").count() >= 7,
        "the pusher stored the segments:\n{log}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left: Vec<String> = std::fs::read_dir(&spool[0])
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".ok") || n.ends_with(".error"))
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "records left: {left:?}");
        std::thread::sleep(Duration::from_millis(100));
    }

    let (out, port, _restored) = restore_started(&pg, &plan, &["--at", &t], "restored");
    let report = json_of(&out);
    assert!(
        report["segments_replayed"].as_u64().unwrap() >= 6,
        "{report}"
    );
    assert_eq!(
        state(port),
        before,
        "the restore differs from the state at {t}"
    );
}

/// Issue 13: on the database host the base backup reads the data
/// directory itself, on one held session; a file untouched since the last
/// backup read it is not read again, and the result restores as a stream
/// would.
#[test]
fn a_base_backup_on_the_database_host_reads_the_data_directory_and_rereads_only_files_that_changed()
{
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    pg.pgbench_init(1);
    // A table nobody writes to again, settled on disk before the first
    // backup (a file changed within 2 s of being read is read again next time).
    pg.sql("CREATE TABLE settled AS SELECT i AS id, repeat(md5(i::text), 8) AS body FROM generate_series(1, 120000) i");
    pg.sql("VACUUM FREEZE settled");
    pg.sql("CHECKPOINT");
    let settled: u64 = pg
        .sql("SELECT pg_relation_size('settled')")
        .trim()
        .parse()
        .unwrap();
    assert!(settled > 30 << 20, "{settled}");
    std::thread::sleep(Duration::from_secs(3));

    let first = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    let out = pgbench(pg.port(), &["-t", "200", "-c", "2", "-n"]);
    assert!(out.status.success(), "{}", text(&out));
    pg.sql("CREATE TABLE later AS SELECT i AS id FROM generate_series(1, 1000) i");
    let second = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    let read = |r: &serde_json::Value| r["bytes_read"].as_u64().unwrap();
    let total = |r: &serde_json::Value| r["total_bytes"].as_u64().unwrap();
    // Both snapshots hold the whole cluster; the second read less of it by
    // at least the settled table (what pgbench grew is far less).
    assert!(total(&second) >= total(&first), "{first} {second}");
    assert_eq!(read(&first), total(&first), "{first}");
    assert!(
        read(&second) + settled / 2 < read(&first),
        "the second backup read {} bytes, the first {}: the settled table ({settled} bytes) was read again",
        read(&second),
        read(&first)
    );
    let before = state(pg.port());
    pg.archive_now();

    // The newest state, from the second snapshot (files reused from the
    // first) and the WAL after it, into a new directory.
    let (out, port2, restored) = restore_started(&pg, &plan, &["--latest"], "restored");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state(port2), before, "the restored cluster differs");
    let to = &restored.data;
    // Read from the directory, not streamed: a pg_basebackup stream always
    // carries the server's backup_manifest.
    assert!(
        !to.join("backup_manifest").exists(),
        "streamed, not read from the data directory"
    );
    assert_eq!(
        sql_at(
            port2,
            "SELECT count(*) FROM settled WHERE body = repeat(md5(id::text), 8)"
        )
        .trim(),
        "120000"
    );

    // `base_backup: local` where the role may not start a backup fails,
    // saying why; nothing is recorded.
    pg.sql("CREATE ROLE plain LOGIN; GRANT pg_read_all_settings TO plain");
    let local_plan = pg.path("local.yaml");
    std::fs::write(
        &local_plan,
        std::fs::read_to_string(&pg.plan)
            .unwrap()
            .replace("name: pg", "name: pglocal")
            .replace(
                "user: postgres}",
                "user: plain, dbname: postgres, base_backup: local, archive: false}",
            ),
    )
    .unwrap();
    common::postgres::chown_postgres(&local_plan);
    let out = pg.holdfast(&["backup", "--plan", s(&local_plan)]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("base_backup: local")
            && text(&out).contains("may not run pg_backup_start"),
        "{}",
        text(&out)
    );
}

/// An incremental base backup read from the data directory hashes only the
/// pages whose LSN shows a change since the previous backup began; every
/// other page of the same file takes its chunk from the previous snapshot
/// (docs/repository-format.md, *Pages unchanged by LSN*). The restored
/// cluster is the source's. A relation file replaced under its name by
/// another file, whose pages carry old LSNs (as a file copied in by
/// `CREATE DATABASE … STRATEGY FILE_COPY` under a reused OID would), is
/// another file: it is read whole and restored as it now is.
#[test]
fn pages_unchanged_by_their_lsn_are_not_hashed_again_and_a_file_replaced_under_its_name_is_read_whole(
) {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    without_autovacuum(&pg);
    for table in ["busy", "donor", "victim"] {
        pg.sql(&format!(
            "CREATE TABLE {table} AS SELECT i AS id, repeat(md5('{table}' || i), 4) AS body FROM generate_series(1, 60000) i"
        ));
    }
    pg.sql("VACUUM FREEZE");
    pg.sql("CHECKPOINT");
    let pages = |table: &str| -> u64 {
        pg.sql(&format!("SELECT pg_relation_size('{table}') / 8192"))
            .trim()
            .parse()
            .unwrap()
    };
    let busy_pages = pages("busy");
    assert!(busy_pages > 1000, "{busy_pages}");

    let unchanged = |r: &serde_json::Value| r["pages_unchanged_by_lsn"].as_u64().unwrap();
    let first = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    assert_eq!(unchanged(&first), 0, "nothing to compare with: {first}");

    // A few rows of `busy` change, so its file is read again.
    pg.sql("UPDATE busy SET body = 'changed' WHERE id % 4000 = 0");
    pg.sql("CHECKPOINT");
    let second = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    assert!(
        unchanged(&second) >= busy_pages - 30,
        "of the {busy_pages} pages of `busy`, at most the changed ones are hashed: {second}"
    );
    let before = state(pg.port());
    pg.archive_now();
    let (out, port2, restored) = restore_started(&pg, &plan, &["--latest"], "restored");
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state(port2), before, "the restored cluster differs");
    assert_eq!(
        sql_at(
            port2,
            "SELECT count(*) FROM busy WHERE body = repeat(md5('busy' || id), 4) OR (id % 4000 = 0 AND body = 'changed')"
        )
        .trim(),
        "60000"
    );
    drop(restored);

    // `victim`'s file, replaced by a copy of `donor`'s: the same path, old
    // LSNs, another inode and birth time.
    let file_of = |table: &str| {
        pg.path("data").join(
            pg.sql(&format!("SELECT pg_relation_filepath('{table}')"))
                .trim(),
        )
    };
    let (victim, donor) = (file_of("victim"), file_of("donor"));
    let copied = std::fs::read(&donor).unwrap();
    let beside = victim.with_extension("copy");
    std::fs::write(&beside, &copied).unwrap();
    chown_postgres(&beside);
    std::fs::rename(&beside, &victim).unwrap();
    let third = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    assert!(unchanged(&third) > 0, "{third}");
    let snapshot = third["snapshot"].as_str().unwrap();
    let to = pg.path("third");
    let _third = Restored { data: to.clone() };
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--snapshot",
        snapshot,
        "--to",
        s(&to),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let rel = victim.strip_prefix(pg.path("data")).unwrap();
    assert!(
        std::fs::read(to.join(rel)).unwrap() == copied,
        "{} was restored from the previous snapshot's pages, not as it was read",
        rel.display()
    );
}

/// The LSN rule under load: an incremental base backup taken while pgbench
/// writes (pages changing, and torn, as they are read) skips the pages
/// that did not change, and the cluster it restores, with the WAL after
/// it, is the source's once the load ended.
#[test]
fn an_incremental_taken_under_write_load_skips_unchanged_pages_and_restores_to_the_sources_state() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    pg.pgbench_init(8);
    pg.sql("CHECKPOINT");
    let first = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    assert_eq!(first["pages_unchanged_by_lsn"], 0, "{first}");

    let load = pgbench_command(pg.port())
        // At a fixed rate, so the share of pages it changes does not
        // depend on the machine's speed.
        .args(["-n", "-c", "2", "-T", "8", "-R", "200", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let second = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    let out = load.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pages = second["pages_unchanged_by_lsn"].as_u64().unwrap();
    assert!(
        pages > second["chunks"].as_u64().unwrap() / 2,
        "most pages are unchanged under a light load: {second}"
    );

    let before = state(pg.port());
    pg.archive_now();
    let (out, port2, _restored) = restore_started(&pg, &plan, &["--latest"], "restored");
    assert!(out.status.success(), "{}", text(&out));
    let report = json_of(&out);
    assert_eq!(report["base_backup"], second["snapshot"], "{report}");
    assert_eq!(state(port2), before, "the restored cluster differs");
}

#[test]
fn a_copy_beside_the_cluster_never_archives_into_the_plan_even_after_its_block_is_removed() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    pg.pgbench_init(1);
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    pg.sql("CREATE TABLE orders AS SELECT i AS id FROM generate_series(1, 500) i");
    pg.archive_now();

    // The runbook's side restore, with no archiving flag: a new path is a
    // scratch copy.
    let to = pg.path("side");
    let out = pg.holdfast(&["restore", "--plan", &plan, "--latest", "--to", s(&to)]);
    assert!(out.status.success(), "{}", text(&out));
    let said = text(&out);
    assert!(said.contains("SCRATCH COPY (restored to"), "{said}");
    assert!(said.contains("it does not archive"), "{said}");

    // Follow the runbook: once promoted, delete the recovery block (BEGIN to
    // END). What holdfast wrote outside it must keep the copy out of the plan.
    let port = free_port();
    let _side = Restored { data: to.clone() };
    let out = common::postgres::as_postgres(
        "pg_ctl",
        &[
            "-D",
            s(&to),
            "-l",
            s(&pg.path("side.log")),
            "-o",
            &format!("-p {port}"),
            "-w",
            "start",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql_at(port, "SELECT pg_is_in_recovery()") != "f" {
        assert!(Instant::now() < deadline, "the copy never promoted");
        std::thread::sleep(Duration::from_millis(200));
    }
    let conf = to.join("postgresql.auto.conf");
    let auto = std::fs::read_to_string(&conf).unwrap();
    let (before_block, rest) = auto.split_once("# BEGIN holdfast recovery").unwrap();
    let (_, after_block) = rest.split_once("# END holdfast recovery\n").unwrap();
    assert!(after_block.contains("archive_mode = off"), "{auto}");
    std::fs::write(&conf, format!("{before_block}{after_block}")).unwrap();
    let out = common::postgres::as_postgres(
        "pg_ctl",
        &["-D", s(&to), "-l", s(&pg.path("side.log")), "-w", "restart"],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(sql_at(port, "SHOW archive_mode"), "off");

    // It writes and switches WAL; the plan's archive gets nothing of it.
    let archived_before = pg.archived();
    sql_at(port, "CREATE TABLE side_work AS SELECT 1 AS x");
    let seg = sql_at(port, "SELECT pg_walfile_name(pg_switch_wal())");
    assert!(seg.starts_with("00000002"), "{seg}");
    std::thread::sleep(Duration::from_secs(3));
    let archived_after = pg.archived();
    assert!(
        archived_after.iter().all(|f| !f.starts_with("00000002")),
        "the scratch copy archived into the plan: {archived_after:?}"
    );
    assert_eq!(archived_before.len(), archived_after.len());
}

#[test]
fn a_restore_as_root_is_refused_before_anything_is_written() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    pg.archive_now();
    let to = pg.path("as-root");
    // The test runs as root (as CI does); the binary directly, not as postgres.
    let out = common::bin::command()
        .args(["restore", "--plan", &plan, "--latest", "--to", s(&to)])
        .output()
        .unwrap();
    if !common::is_root() {
        eprintln!("this check needs root; CI runs as root");
        return;
    }
    exits_saying(&out, 1, "runuser -u postgres -- holdfast restore");
    assert!(!to.exists(), "nothing may be written");
}

#[test]
fn a_missing_or_corrupt_segment_or_a_target_outside_the_window_is_refused_before_anything_is_written(
) {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    let early = pg.now();
    pg.pgbench_init(1);
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    let mut segments = Vec::new();
    for i in 1..=3 {
        segments.push(pg.fill_segment(i));
    }
    let t = pg.now();
    let lsn_t = pg.sql("SELECT pg_current_wal_lsn()");
    let at_t = state(pg.port());
    std::thread::sleep(Duration::from_millis(1100));
    pg.sql("INSERT INTO orders(note) VALUES ('after t')");
    pg.archive_now();
    let to = pg.path("restored");

    // Past the end of the archived WAL by location: refused with the window.
    let out = pg.holdfast(&["restore", "--plan", &plan, "--lsn", "FF/0", "--to", s(&to)]);
    exits_saying(&out, 2, "past the end of the newest archived segment");
    assert!(!to.exists());

    // Earlier than the oldest base backup: refused with the window.
    let out = pg.holdfast(&["restore", "--plan", &plan, "--at", &early, "--to", s(&to)]);
    exits_saying(&out, 2, "Restorable window:");
    assert!(!to.exists());

    // A base backup that does not exist: a usage error, like any bad selector.
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--snapshot",
        "ffffffff",
        "--to",
        s(&to),
    ]);
    exits_saying(
        &out,
        2,
        "no PostgreSQL base backup matches --snapshot ffffffff",
    );
    assert!(!to.exists());

    // Later than anything archived: refused with the window.
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--at",
        "2099-01-01T00:00:00Z",
        "--to",
        s(&to),
    ]);
    exits_saying(&out, 2, "later than the newest archived transaction");
    assert!(!to.exists());

    // A segment in the middle is corrupt: named, nothing written.
    let object = pg.path(&format!("repo/objects/wal/pg/{}", segments[1]));
    let good = flip(&object, |len| len - 30, 0x5a);
    let out = pg.holdfast(&["restore", "--plan", &plan, "--at", &t, "--to", s(&to)]);
    names_unauthentic(&said_by(&out, 5), &segments[1]);
    assert!(!to.exists());
    // The base backup restored beside the target while the WAL was checked
    // is removed with it, and so is the WAL spool.
    let leftovers = |to: &std::path::Path| -> Vec<String> {
        std::fs::read_dir(to.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".restored."))
            .collect()
    };
    assert_eq!(leftovers(&to), Vec::<String>::new());

    // verify reads the archived WAL too, and names the damaged file.
    let out = pg.holdfast(&["verify", "--plan", &plan]);
    names_unauthentic(&said_by(&out, 5), &segments[1]);

    // Missing: named, nothing written.
    std::fs::remove_file(&object).unwrap();
    let out = pg.holdfast(&["restore", "--plan", &plan, "--at", &t, "--to", s(&to)]);
    exits_saying(&out, 5, &format!("wal/pg/{} is missing", segments[1]));
    assert!(!to.exists());
    assert_eq!(leftovers(&to), Vec::<String>::new());
    let listed = pg.holdfast(&["snapshots", "--plan", &plan]);
    assert!(
        text(&listed).contains(&format!("segment {} is missing", segments[1])),
        "{}",
        text(&listed)
    );

    // Put back (as a new object, as an operator would from elsewhere): it restores.
    std::fs::write(&object, &good).unwrap();
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--at",
        &t,
        "--to",
        s(&to),
        "--no-archive",
        "--json",
    ]);
    let report = json_of(&out);
    assert!(
        report["segments_checked"].as_u64().unwrap() >= 3,
        "{report}"
    );
    assert!(to.join("recovery.signal").exists());
    let auto = std::fs::read_to_string(to.join("postgresql.auto.conf")).unwrap();
    assert!(
        auto.contains("recovery_target_time") && auto.contains("wal-fetch"),
        "{auto}"
    );
    assert!(auto.contains("archive_mode = off"), "{auto}");

    // By location: the state at the LSN noted with T, without the later row.
    let by_lsn = pg.path("by-lsn");
    let port = free_port();
    let _restored = Restored {
        data: by_lsn.clone(),
    };
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--lsn",
        &lsn_t,
        "--to",
        s(&by_lsn),
        "--start",
        "--port",
        &port.to_string(),
        "--no-archive",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state(port), at_t);
}

#[test]
fn a_base_backup_waiting_on_a_failing_archiver_ends_naming_the_segment() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    pg.sql("ALTER SYSTEM SET archive_command = 'false'");
    pg.sql("SELECT pg_reload_conf()");
    // pg_reload_conf() only signals: wait until the archiver itself runs the
    // new command and fails, so the backup below meets a failing archiver.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg.sql("SHOW archive_command") != "false" {
        assert!(
            Instant::now() < deadline,
            "the server never reloaded: {}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    pg.fill_segment(1);
    while pg.sql("SELECT failed_count FROM pg_stat_archiver") == "0" {
        assert!(
            Instant::now() < deadline,
            "the archiver never ran the failing command: {}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = command_as("postgres", &[("HOLDFAST_ARCHIVE_STALL_SECONDS", "3")])
        .args(["backup", "--plan", &plan])
        .output()
        .unwrap();
    exits_saying(
        &out,
        7,
        "has not archived WAL segment 0000000100000000000000",
    );
    let listed = pg.holdfast(&["snapshots", "--plan", &plan, "--json"]);
    assert_eq!(json_of(&listed), serde_json::json!([]));
}

/// A base backup killed (SIGKILL) while it waits for its WAL to be archived
/// leaves no snapshot, a repository that verifies, and a server the next
/// backup runs against as usual once archiving works again.
#[test]
fn a_base_backup_killed_while_it_waits_for_its_wal_leaves_no_snapshot_and_the_next_one_succeeds() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    pg.pgbench_init(1);
    pg.sql("ALTER SYSTEM SET archive_command = 'false'");
    pg.sql("SELECT pg_reload_conf()");
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg.sql("SHOW archive_command") != "false" {
        assert!(Instant::now() < deadline, "no reload: {}", pg.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let mut backup = command_as("postgres", &[])
        .args(["backup", "--plan", &plan])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // The backup's own session, stopped and looking at the archiver while
    // it waits for its WAL.
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'holdfast backup %' AND query LIKE '%FROM pg_stat_archiver%'";
    while pg.sql(waiting) != "1" {
        assert!(
            Instant::now() < deadline && backup.try_wait().unwrap().is_none(),
            "the backup never waited for its WAL: {}",
            pg.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // runuser's child is env(1), which became holdfast.
    let killed = Command::new("pkill")
        .args(["-KILL", "-P", &backup.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let _ = backup.wait();
    let listed = pg.holdfast(&["snapshots", "--plan", &plan, "--json"]);
    assert_eq!(
        json_of(&listed),
        serde_json::json!([]),
        "a half snapshot is listed"
    );

    // Its session ended with it (psql reads the end of its input).
    let deadline = Instant::now() + Duration::from_secs(30);
    while pg.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'holdfast backup %'",
    ) != "0"
    {
        assert!(
            Instant::now() < deadline,
            "the killed backup's session lingers"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Archiving repaired: a new backup runs as usual.
    pg.sql("ALTER SYSTEM RESET archive_command");
    pg.sql("SELECT pg_reload_conf()");
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    let listed = json_of(&pg.holdfast(&["snapshots", "--plan", &plan, "--json"]));
    assert_eq!(listed.as_array().unwrap().len(), 1, "{listed}");
    let out = pg.holdfast(&["verify", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn a_logical_dump_restores_into_a_new_database_and_a_damaged_or_missing_chunk_reaches_no_server() {
    let pg = Cluster::start();
    pg.sql("CREATE DATABASE app");
    let app = |sql: &str| sql_in(pg.port(), "app", sql);
    app("CREATE TABLE invoices(id int PRIMARY KEY, total numeric, memo text); INSERT INTO invoices SELECT i, i * 1.5, repeat(md5(i::text), 4) FROM generate_series(1, 20000) i; CREATE INDEX ON invoices(total)");
    let before = state_in(pg.port(), "app");
    let plan = pg.path("logical.yaml");
    std::fs::write(
        &plan,
        format!(
            "name: pg-logical\nsource: {{type: postgres, host: 127.0.0.1, port: {}, user: postgres, mode: logical, logical_dumps: [app]}}\nrepository: {{url: {}}}\nschedule: {{backup: '0 1 * * *'}}\nlock: {{mode: compliance, days: 8}}\nretention: {{keep_daily: 7}}\n",
            pg.port(),
            pg.path("repo-logical").display()
        ),
    )
    .unwrap();
    chown_postgres(pg.dir.path());
    let plan = s(&plan).to_string();
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));

    let url = |db: &str| format!("postgres://postgres@127.0.0.1:{}/{db}", pg.port());
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--dump",
        "app",
        "--into",
        &url("app_copy"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state_in(pg.port(), "app_copy"), before);

    // Into a database that has tables: refused. A dump that was not taken: named.
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--dump",
        "app",
        "--into",
        &url("app_copy"),
    ]);
    assert!(!out.status.success());
    assert!(text(&out).contains("already has tables"), "{}", text(&out));
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--dump",
        "nope",
        "--into",
        &url("x"),
    ]);
    assert!(
        text(&out).contains("no logical dump of database nope (it has: app)"),
        "{}",
        text(&out)
    );

    // A damaged chunk in the middle of the dump, then a missing one: the
    // restore fails naming the pack, and no byte of the dump reached the
    // server: the missing database is not created, the empty one is left
    // as it was, and no transaction wrote anything (with autovacuum off,
    // the only transaction ids assigned are the test's own two).
    pg.sql("CREATE DATABASE app_empty");
    pg.sql("ALTER SYSTEM SET autovacuum = off");
    pg.sql("SELECT pg_reload_conf()");
    let catalog = |db: &str| {
        sql_in(
            pg.port(),
            db,
            "SELECT count(*) || ' relations, ' || (SELECT count(*) FROM pg_namespace) || ' schemas' FROM pg_class",
        )
    };
    let empty_before = catalog("app_empty");
    let packs = pg.path("repo-logical/objects/packs");
    let pack = files_under(&packs)
        .into_iter()
        .max_by_key(|p| std::fs::metadata(p).unwrap().len())
        .unwrap();
    let key = pack
        .strip_prefix(pg.path("repo-logical/objects"))
        .unwrap()
        .to_string_lossy()
        .into_owned();
    let xid_before: u64 = pg.sql("SELECT pg_current_xact_id()").parse().unwrap();
    flip(&pack, |len| len / 2, 0xff);
    for into in ["app_damaged", "app_empty"] {
        let out = pg.holdfast(&[
            "restore",
            "--plan",
            &plan,
            "--dump",
            "app",
            "--into",
            &url(into),
        ]);
        assert_eq!(out.status.code(), Some(5), "{}", text(&out));
        assert!(text(&out).contains(&key), "{}", text(&out));
    }
    flip(&pack, |len| len / 2, 0xff);
    let aside = pack.with_extension("aside");
    std::fs::rename(&pack, &aside).unwrap();
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--dump",
        "app",
        "--into",
        &url("app_empty"),
    ]);
    assert_eq!(out.status.code(), Some(5), "{}", text(&out));
    assert!(text(&out).contains(&key), "{}", text(&out));
    std::fs::rename(&aside, &pack).unwrap();
    let xid_after: u64 = pg.sql("SELECT pg_current_xact_id()").parse().unwrap();
    assert_eq!(xid_after, xid_before + 1, "a transaction ran on the server");
    assert_eq!(
        pg.sql("SELECT count(*) FROM pg_database WHERE datname = 'app_damaged'"),
        "0"
    );
    assert_eq!(catalog("app_empty"), empty_before);
    // The repaired pack restores into the same empty database.
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--dump",
        "app",
        "--into",
        &url("app_empty"),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(state_in(pg.port(), "app_empty"), before);
}

#[test]
fn prune_removes_wal_older_than_every_remaining_base_backup_and_the_rest_still_restores() {
    let pg = Cluster::start_with("{mode: none}", "{keep_last: 1}");
    let plan = s(&pg.plan).to_string();
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    let old: Vec<String> = (1..=3).map(|i| pg.fill_segment(i)).collect();
    let second = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    pg.fill_segment(1);
    let after = state(pg.port());
    pg.archive_now();
    let start_of_second = pg
        .archived()
        .into_iter()
        .filter(|n| n.ends_with(".backup"))
        .max()
        .unwrap()[..24]
        .to_string();

    let dry = json_of(&pg.holdfast(&["prune", "--plan", &plan, "--dry-run", "--json"]));
    assert!(dry["wal_files_removed"].as_u64().unwrap() >= 3, "{dry}");
    assert!(pg.archived().contains(&old[0]));
    let report = json_of(&pg.holdfast(&["prune", "--plan", &plan, "--json"]));
    assert_eq!(report["removed"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(
        report["wal_files_removed"], dry["wal_files_removed"],
        "{report}"
    );
    let left = pg.archived();
    for seg in &old {
        assert!(
            !left.contains(seg),
            "{seg} outlived every base backup: {left:?}"
        );
    }
    assert!(
        left.contains(&start_of_second),
        "{start_of_second} was removed: {left:?}"
    );

    // The remaining base backup and its WAL still rebuild the cluster.
    let to = pg.path("restored");
    let port = free_port();
    let _restored = Restored { data: to.clone() };
    let out = pg.holdfast(&[
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
    assert_eq!(report["base_backup"], second["snapshot"], "{report}");
    assert_eq!(state(port), after);
}

#[test]
fn a_base_backup_whose_archive_command_is_not_found_ends_naming_the_segment_and_the_cause() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    // Runbook §9's archive_command with holdfast not where the server looks:
    // exit 127, which ends PostgreSQL's archiver and counts no failure.
    pg.sql(&format!(
        "ALTER SYSTEM SET archive_command = '/nonexistent/holdfast wal-push --plan {plan} %p'"
    ));
    pg.sql("SELECT pg_reload_conf()");
    let mut backup = command_as("postgres", &[("HOLDFAST_ARCHIVE_STALL_SECONDS", "8")])
        .args(["backup", "--plan", &plan])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A bound, so that a backup waiting for ever fails the test instead of
    // hanging it.
    let deadline = Instant::now() + Duration::from_secs(180);
    while backup.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = backup.kill();
            panic!(
                "holdfast backup still waits after 180 s (failed_count {}); server log:\n{}",
                pg.sql("SELECT failed_count FROM pg_stat_archiver"),
                pg.log()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = backup.wait_with_output().unwrap();
    let said = said_by(&out, 7);
    // PostgreSQL counted nothing: the judgement was on progress alone.
    assert_eq!(pg.sql("SELECT failed_count FROM pg_stat_archiver"), "0");
    let (_, after) = said
        .split_once("has not archived WAL segment ")
        .unwrap_or_else(|| panic!("no segment named: {said}"));
    let segment = &after[..24.min(after.len())];
    assert!(
        segment.len() == 24 && segment.bytes().all(|b| b.is_ascii_hexdigit()),
        "{said}"
    );
    for needle in [
        "last archived: never",
        "command not found",
        "/usr/local/bin/holdfast",
        "permissions",
        "server log",
    ] {
        assert!(said.contains(needle), "{needle:?} not in: {said}");
    }
    // The server's side of the backup was ended too.
    let deadline = Instant::now() + Duration::from_secs(60);
    while pg.sql(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'holdfast backup %'",
    ) != "0"
    {
        assert!(
            Instant::now() < deadline,
            "the backup's walsender is still there; holdfast said: {said}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let listed = pg.holdfast(&["snapshots", "--plan", &plan, "--json"]);
    assert_eq!(json_of(&listed), serde_json::json!([]));
    let out = pg.holdfast(&["verify", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `holdfast restore --plan PLAN TARGET… --to DIR --start --port N
/// --no-archive --json`, as on-call runs it, into `dir` under the test's
/// folder on a free port: its output, the port, and the guard that stops the
/// server at the end of the test.
fn restore_started(
    pg: &Cluster,
    plan: &str,
    target: &[&str],
    dir: &str,
) -> (std::process::Output, u16, Restored) {
    let to = pg.path(dir);
    let port = free_port();
    let restored = Restored { data: to.clone() };
    let port_arg = port.to_string();
    let mut args = vec!["restore", "--plan", plan];
    args.extend_from_slice(target);
    args.extend_from_slice(&["--to", s(&to), "--start", "--port", &port_arg]);
    args.extend_from_slice(&["--no-archive", "--json"]);
    (pg.holdfast(&args), port, restored)
}

/// A time from a report or listing.
fn time_of(v: &serde_json::Value) -> chrono::DateTime<chrono::Utc> {
    let s = v.as_str().unwrap_or_else(|| panic!("not a time: {v}"));
    chrono::DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("{s}: {e}"))
        .with_timezone(&chrono::Utc)
}

/// The listing's row for the snapshot whose id is `id`.
fn row_of<'a>(listed: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    listed
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("snapshot {id} is not listed: {listed}"))
}

/// Autovacuum commits at times of its own; these tests need to know which
/// transaction is the newest.
fn without_autovacuum(pg: &Cluster) {
    pg.sql("ALTER SYSTEM SET autovacuum = off");
    pg.sql("SELECT pg_reload_conf()");
}

#[test]
fn every_base_backup_lies_in_a_window_that_never_ends_before_it_starts() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    without_autovacuum(&pg);
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 1000) i");

    pg.pgbench_init(1);

    // (a) Right after the first base backup (taken under a write load, so
    // its own WAL holds commits), before any later WAL is archived: its
    // window starts and ends at it, not at the last commit inside it.
    let mut load = pgbench_command(pg.port())
        .args(["-T", "120", "-c", "2", "-n", "postgres"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let first = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    let first = first["snapshot"].as_str().unwrap().to_string();
    // Stop the load as soon as the backup is in: left running, it can fill
    // (full-page writes after the backup's checkpoint) and archive a later
    // segment, whose commits then rightly extend the window (seen in CI).
    assert!(
        load.try_wait().unwrap().is_none(),
        "the pgbench load ended before the backup did: it did not run under load"
    );
    let _ = load.kill();
    let _ = load.wait();
    let listed = json_of(&pg.holdfast(&["snapshots", "--plan", &plan, "--json"]));
    let w = &row_of(&listed, &first)["restorable"];
    let (from, to) = (time_of(&w["from"]), time_of(&w["to"]));
    assert!(from <= to, "window ends before it starts: {w}");
    let consistent = time_of(&w["base_backups_at"][0]);
    assert!(
        from <= consistent && consistent <= to,
        "the window does not hold the base backup's consistent point {consistent}: {w}"
    );
    assert!(
        time_of(&w["newest_transaction"]) < consistent,
        "the load's commits inside the backup are not read: {w}"
    );

    // (b) Writes, archived; then, with nothing written since, a second base
    // backup: newer than the newest archived transaction, and restorable.
    pg.sql("INSERT INTO orders(note) SELECT 'after the first backup ' || i FROM generate_series(1, 500) i");
    let after_writes = state(pg.port());
    pg.archive_now();
    std::thread::sleep(Duration::from_millis(1100));
    let t = pg.now();
    std::thread::sleep(Duration::from_millis(1100));
    let second = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    let second = second["snapshot"].as_str().unwrap().to_string();
    let listed = json_of(&pg.holdfast(&["snapshots", "--plan", &plan, "--json"]));
    let row = row_of(&listed, &second);
    let w = &row["restorable"];
    assert!(
        w.is_object(),
        "base backup {second} is in no window: {listed}"
    );
    let n = w["base_backups"].as_array().unwrap().len();
    let consistent = time_of(&w["base_backups_at"][n - 1]);
    assert!(
        time_of(&w["newest_transaction"]) < time_of(&serde_json::json!(t)),
        "a transaction after {t}: {w}"
    );
    assert!(
        time_of(&w["to"]) >= consistent,
        "the window ends before base backup {second}'s consistent point {consistent}: {w}"
    );
    assert!(row.get("pending").is_none(), "{row}");

    // Its WAL not archived yet (the archiver behind): listed as pending,
    // naming the segment it waits for; back in the window once archived.
    let stop_segment = pg
        .archived()
        .into_iter()
        .filter(|n| n.len() == 24)
        .max()
        .unwrap();
    let object = pg.path(&format!("repo/objects/wal/pg/{stop_segment}"));
    let aside = pg.path("aside");
    std::fs::rename(&object, &aside).unwrap();
    let out = pg.holdfast(&["snapshots", "--plan", &plan]);
    let short = &second[..8];
    assert!(
        text(&out).contains(&format!(
            "base backup {short} (consistent at {}) is restorable once segment {stop_segment} is archived",
            consistent.to_rfc3339()
        )),
        "{}",
        text(&out)
    );
    let listed = json_of(&pg.holdfast(&["snapshots", "--plan", &plan, "--json"]));
    let row = row_of(&listed, &second);
    assert_eq!(row["pending"]["waits_for_segment"], stop_segment, "{row}");
    assert!(row.get("restorable").is_none(), "{row}");
    std::fs::rename(&aside, &object).unwrap();
    let listed = json_of(&pg.holdfast(&["snapshots", "--plan", &plan, "--json"]));
    assert!(
        row_of(&listed, &second)["restorable"].is_object(),
        "{listed}"
    );

    // A time after the newest archived transaction, covered by the second
    // backup: restored from it, to its end, and said so.
    let (out, port, _restored) = restore_started(&pg, &plan, &["--at", &t], "restored");
    let report = json_of(&out);
    assert_eq!(report["base_backup"], second, "{report}");
    assert_eq!(report["target"], "the end of the base backup", "{report}");
    assert!(
        report["notes"][0]
            .as_str()
            .unwrap()
            .contains("is later than the newest archived transaction"),
        "{report}"
    );
    assert_eq!(
        state(port),
        after_writes,
        "the restored cluster differs from the state at {t}"
    );
}

#[test]
fn snapshot_latest_on_postgres_says_it_stops_at_the_base_backup_and_points_to_latest() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 1000) i");
    let backup = json_of(&pg.holdfast(&["backup", "--plan", &plan, "--json"]));
    let snap = backup["snapshot"].as_str().unwrap().to_string();
    let at_backup = state(pg.port());
    pg.sql(
        "INSERT INTO orders(note) SELECT 'after the backup ' || i FROM generate_series(1, 500) i",
    );
    let newest = pg.archive_now();
    assert_ne!(state(pg.port()), at_backup);

    // Text: what was restored, what was not, and what gives the newest state.
    let to = pg.path("text");
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--snapshot",
        "latest",
        "--to",
        s(&to),
    ]);
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "note: restored to the end of base backup {}",
            &snap[..8]
        )) && said.contains(&format!("through {newest}) were not replayed"))
            && said.contains("use --latest for the newest state"),
        "{said}"
    );

    // JSON, started: the state at the base backup, not the newest one.
    let (out, port, _restored) = restore_started(&pg, &plan, &["--snapshot", "latest"], "json");
    let report = json_of(&out);
    assert_eq!(report["base_backup"], snap, "{report}");
    assert_eq!(report["replays_wal_after_base_backup"], false, "{report}");
    assert!(
        report["notes"][0]
            .as_str()
            .unwrap()
            .contains("use --latest for the newest state"),
        "{report}"
    );
    assert_eq!(state(port), at_backup);

    // --latest replays the WAL after it and says nothing of the kind.
    let to = pg.path("latest");
    let report = json_of(&pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--latest",
        "--to",
        s(&to),
        "--json",
    ]));
    assert_eq!(report["replays_wal_after_base_backup"], true, "{report}");
    assert_eq!(report["notes"], serde_json::json!([]), "{report}");

    // Past the archive: refused, saying how to archive what was written since.
    let to = pg.path("past");
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--at",
        "2099-01-01T00:00:00Z",
        "--to",
        s(&to),
    ]);
    exits_saying(
        &out,
        2,
        "run `SELECT pg_switch_wal()` on it, wait for archiving, and retry",
    );
    assert!(!to.exists());
}

#[test]
fn recovery_on_a_port_in_use_says_the_data_directory_is_ready_and_how_to_start_it() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));
    pg.sql("CREATE TABLE orders AS SELECT i AS id FROM generate_series(1, 500) i");
    pg.archive_now();

    // The cluster itself listens on this port.
    let to = pg.path("busy-port");
    let _copy = Restored { data: to.clone() };
    let busy = pg.port().to_string();
    let out = pg.holdfast(&[
        "restore",
        "--plan",
        &plan,
        "--latest",
        "--to",
        s(&to),
        "--start",
        "--port",
        &busy,
    ]);
    exits_saying(&out, 1, "recovery failed");
    let said = text(&out);
    assert!(said.contains("Address already in use"), "{said}");
    let hint = said
        .lines()
        .find(|l| l.contains("is restored and ready"))
        .unwrap_or_else(|| panic!("no way out: {said}"));
    assert!(
        hint.contains("The port is in use") && hint.contains("its owner postgres"),
        "{hint}"
    );
    // The command as printed: pg_ctl -D DIR -o '-p N' -l LOG start.
    let command = hint.split_once("its owner postgres: ").unwrap().1;
    let words: Vec<&str> = command.split(' ').collect();
    assert_eq!(words[1..3], ["-D", s(&to)], "{command}");
    assert_eq!(words[3], "-o", "{command}");
    let port: u16 = words[5].trim_end_matches('\'').parse().unwrap();
    assert_ne!(port.to_string(), busy);
    assert_eq!((words[6], words[8]), ("-l", "start"), "{command}");
    // Run it, as the owner: the copy recovers and promotes.
    let out = common::postgres::as_postgres(
        words[0],
        &[
            "-D",
            s(&to),
            "-o",
            &format!("-p {port}"),
            "-l",
            words[7],
            "-w",
            "start",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(60);
    while sql_at(port, "SELECT pg_is_in_recovery()") != "f" {
        assert!(Instant::now() < deadline, "the copy never promoted");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(sql_at(port, "SELECT count(*) FROM orders"), "500");
}

/// Every process's command line seen while `run` runs, sampled every
/// millisecond from `/proc/*/cmdline` (arguments joined by spaces).
fn command_lines_during<T>(run: impl FnOnce() -> T) -> (T, std::collections::BTreeSet<String>) {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = std::collections::BTreeSet::new();
            while !stop.load(Ordering::SeqCst) {
                for e in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
                    if !e
                        .file_name()
                        .to_string_lossy()
                        .bytes()
                        .all(|b| b.is_ascii_digit())
                    {
                        continue;
                    }
                    if let Ok(raw) = std::fs::read(e.path().join("cmdline")) {
                        let line = String::from_utf8_lossy(&raw).replace('\0', " ");
                        seen.insert(line.trim().to_string());
                    }
                }
                std::thread::sleep(Duration::from_millis(1));
            }
            seen
        })
    };
    let out = run();
    stop.store(true, Ordering::SeqCst);
    (out, sampler.join().unwrap())
}

#[test]
fn a_password_reaches_pg_basebackup_pg_dump_psql_and_pg_restore_only_through_their_environment_and_no_message_shows_it(
) {
    // Password authentication for everyone but the test's own superuser.
    let pg = Cluster::create(None, "{mode: compliance, days: 8}", "{keep_daily: 7}");
    std::fs::write(
        pg.path("data/pg_hba.conf"),
        "local all all trust\nhost all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\nhost replication all 127.0.0.1/32 scram-sha-256\n",
    )
    .unwrap();
    pg.start_server();
    // `/`, `?`, `@` and `:` would break a URL unless encoded.
    let password = "Pw9f3a/7?x@q:k-holdfast";
    pg.sql(&format!(
        "CREATE ROLE app LOGIN REPLICATION CREATEDB PASSWORD '{password}'; GRANT pg_read_all_data, pg_monitor TO app"
    ));
    pg.sql("CREATE DATABASE appdb OWNER app");
    sql_in(
        pg.port(),
        "appdb",
        "CREATE TABLE ledger(id int PRIMARY KEY, memo text); INSERT INTO ledger SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, 200000) i; ALTER TABLE ledger OWNER TO app",
    );
    let before = state_in(pg.port(), "appdb");
    // The password is needed: without it, app is refused.
    let refused = Command::new("psql")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "app",
            "-d",
            "appdb",
            "-w",
            "-c",
            "SELECT 1",
        ])
        .env_remove("PGPASSWORD")
        .output()
        .unwrap();
    assert!(
        !refused.status.success(),
        "app connects without its password"
    );

    let secret = pg.path("app.password");
    std::fs::write(&secret, format!("{password}\n")).unwrap();
    chown_postgres(&secret);
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let repo = pg.path("repo");
    // The cluster's own plan, now connecting as app with a password file
    // (archive_command reads it too, so no ${VAR} it would lack).
    std::fs::write(
        &pg.plan,
        format!(
            "name: pg\nsource: {{type: postgres, host: 127.0.0.1, port: {}, user: app, password_file: {}, dbname: appdb, logical_dumps: [appdb]}}\nrepository: {{url: {}}}\nschedule: {{backup: '0 1 * * *'}}\nlock: {{mode: compliance, days: 8}}\nretention: {{keep_daily: 7}}\n",
            pg.port(),
            secret.display(),
            repo.display()
        ),
    )
    .unwrap();
    chown_postgres(pg.dir.path());
    let plan = s(&pg.plan).to_string();
    let as_postgres = |vars: &[(&str, &str)], args: &[&str]| {
        let mut c = common::bin::run_as("postgres", common::bin::BIN);
        c.env("HOLDFAST_LOG", "debug")
            .env("HOLDFAST_KEY", common::bin::TEST_KEY)
            .envs(vars.iter().copied())
            .args(args);
        c.output().unwrap()
    };
    let encoded = password
        .replace('/', "%2F")
        .replace('?', "%3F")
        .replace('@', "%40")
        .replace(':', "%3A");
    let shows = |t: &str| t.contains(password) || t.contains(&encoded) || t.contains("Pw9f3a");

    let (out, lines) = command_lines_during(|| as_postgres(&[], &["backup", "--plan", &plan]));
    assert!(out.status.success(), "{}", text(&out));
    let (restored, more) = command_lines_during(|| {
        as_postgres(
            &[("PGPASSWORD", password)],
            &[
                "restore",
                "--plan",
                &plan,
                "--dump",
                "appdb",
                "--into",
                &format!("postgres://app@127.0.0.1:{}/appdb_copy", pg.port()),
            ],
        )
    });
    assert!(restored.status.success(), "{}", text(&restored));
    assert_eq!(state_in(pg.port(), "appdb_copy"), before);
    let lines: Vec<String> = lines.into_iter().chain(more).collect();
    for program in ["pg_basebackup", "pg_dump", "pg_restore"] {
        assert!(
            lines.iter().any(|l| l.contains(program)),
            "the sampler never saw {program}: it proves nothing"
        );
    }
    let leaked: Vec<&String> = lines.iter().filter(|l| shows(l)).collect();
    assert!(
        leaked.is_empty(),
        "a password on a command line: {leaked:?}"
    );
    assert!(
        !shows(&text(&out)) && !shows(&text(&restored)),
        "a password in a debug log"
    );

    // A password in --into is refused, without echoing it.
    let out = as_postgres(
        &[],
        &[
            "restore",
            "--plan",
            &plan,
            "--dump",
            "appdb",
            "--into",
            &format!("postgres://app:{encoded}@127.0.0.1:{}/x", pg.port()),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(
        text(&out).contains("PGPASSWORD") && !shows(&text(&out)),
        "{}",
        text(&out)
    );

    // A dsn with the password from the environment; then failures: a host
    // that does not exist, a wrong password. No message shows the password.
    let dsn_plan = |name: &str, host: &str| {
        let file = pg.path(&format!("{name}.yaml"));
        std::fs::write(
            &file,
            format!(
                "name: {name}\nsource: {{type: postgres, mode: logical, logical_dumps: [appdb], dsn: 'postgresql://app:${{HF_APP_PASSWORD}}@{host}:{}/appdb'}}\nrepository: {{url: {}}}\nschedule: {{backup: '0 1 * * *'}}\nlock: {{mode: compliance, days: 8}}\nretention: {{keep_daily: 7}}\n",
                pg.port(),
                repo.display()
            ),
        )
        .unwrap();
        chown_postgres(&file);
        s(&file).to_string()
    };
    let good = dsn_plan("viadsn", "127.0.0.1");
    let (out, lines) = command_lines_during(|| {
        as_postgres(
            &[("HF_APP_PASSWORD", password)],
            &["backup", "--plan", &good],
        )
    });
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        lines.iter().any(|l| l.contains("pg_dump")),
        "the sampler never saw pg_dump"
    );
    assert!(!lines.iter().any(|l| shows(l)) && !shows(&text(&out)));
    let nohost = dsn_plan("nohost", "no-such-host.invalid");
    let out = as_postgres(
        &[("HF_APP_PASSWORD", password)],
        &["backup", "--plan", &nohost],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(
        text(&out).contains("no-such-host.invalid") && !shows(&text(&out)),
        "{}",
        text(&out)
    );
    let out = as_postgres(
        &[("HF_APP_PASSWORD", "wrong/pass?word@Pw9f3a")],
        &["backup", "--plan", &good],
    );
    assert_eq!(out.status.code(), Some(7), "{}", text(&out));
    assert!(
        text(&out).contains("password authentication failed") && !text(&out).contains("wrong"),
        "{}",
        text(&out)
    );
}

/// Issue 11: someone with write access to the bucket adds keys. Garbage at
/// the name of the next WAL segment (and of one far in the future), a
/// garbage `00000002.history` and a well-formed forged `00000003.history`
/// stop neither archiving nor a point-in-time restore past them.
#[test]
fn a_planted_future_wal_key_and_forged_histories_stop_neither_archiving_nor_a_restore_past_them() {
    let pg = Cluster::start();
    let plan = s(&pg.plan).to_string();
    let out = pg.holdfast(&["backup", "--plan", &plan]);
    assert!(out.status.success(), "{}", text(&out));

    // The insider plants objects at names PostgreSQL will archive later
    // (after a write, so the current location is inside the segment).
    pg.sql("CREATE TABLE orders(id serial PRIMARY KEY, note text); INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 2000) i");
    let wal_dir = pg.path("repo/objects/wal/pg");
    let next = pg.sql("SELECT pg_walfile_name(pg_current_wal_lsn())");
    let far = format!(
        "{}{:08X}",
        &next[..16],
        u32::from_str_radix(&next[16..], 16).unwrap() + 40
    );
    std::fs::write(wal_dir.join(&next), b"planted by an insider").unwrap();
    std::fs::write(wal_dir.join(&far), vec![0u8; 4096]).unwrap();
    std::fs::write(wal_dir.join("00000002.history"), b"not a history").unwrap();
    // In `encryption: none` a well-formed history can be forged too: one for
    // a timeline nothing was ever archived on, branching before the backup.
    std::fs::create_dir(pg.path("forged")).unwrap();
    let forged = pg.path("forged/00000003.history");
    std::fs::write(&forged, "1\t0/1000000\tforged\n2\t0/1000100\tforged\n").unwrap();
    chown_postgres(&pg.path("forged"));
    let out = pg.holdfast(&["wal-push", "--plan", &plan, s(&forged)]);
    assert!(out.status.success(), "{}", text(&out));

    // Archiving goes on: the segment lands under its alternative name, the
    // server log says so loudly, and no archive_command failed.
    pg.sql("INSERT INTO orders(note) SELECT md5(i::text) FROM generate_series(1, 2000) i");
    assert_eq!(pg.archive_now(), next);
    let alt = pg
        .archived()
        .into_iter()
        .find(|n| n.starts_with(&format!("{next}.alt-")));
    assert!(
        alt.is_some(),
        "no alternative for {next}: {:?}",
        pg.archived()
    );
    assert_eq!(pg.sql("SELECT failed_count FROM pg_stat_archiver"), "0");
    let log = pg.log();
    assert!(
        log.contains("FOREIGN OBJECT") && log.contains(&format!("wal/pg/{next}")),
        "{log}"
    );

    // Past the planted segment: T, the state at T, then more.
    pg.sql("INSERT INTO orders(note) SELECT 'past the planted key ' || i FROM generate_series(1, 500) i");
    std::thread::sleep(Duration::from_millis(1100));
    let t = pg.now();
    let at_t = state(pg.port());
    std::thread::sleep(Duration::from_millis(1100));
    pg.sql("DELETE FROM orders WHERE id % 2 = 0");
    pg.archive_now();

    // The window reaches past T, without a gap at the far planted key.
    let listed = json_of(&pg.holdfast(&["snapshots", "--plan", &plan, "--json"]));
    let window = &listed[0]["restorable"];
    assert!(window["to"].as_str().unwrap() > t.as_str(), "{listed}");

    // A point-in-time restore past the planted segment reaches T, on
    // timeline 1: neither forged history is followed.
    let (out, port, _restored) = restore_started(&pg, &plan, &["--at", &t], "restored");
    let report = json_of(&out);
    assert_eq!(report["timeline_path"], serde_json::json!([1]), "{report}");
    assert_eq!(
        state(port),
        at_t,
        "the restore differs from the state at {t}"
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("00000002.history") && stderr.contains("00000003.history"),
        "the skipped histories are named: {stderr}"
    );

    // verify names every foreign object and fails.
    let out = pg.holdfast(&["verify", "--plan", &plan]);
    for key in [next.as_str(), far.as_str(), "00000002.history"] {
        exits_saying(&out, 5, &format!("wal/pg/{key} is corrupt or foreign"));
    }
}
