//! `holdfast verify --sample`, as the runbook uses it: a share of the packs
//! read back, continuing where the last sampled verify stopped, so repeated
//! runs find a corrupt pack within a turn of the ring; every pack's presence
//! (and size) checked even when it is not read; the plan's `verify.sample`,
//! the flag overriding it, bad values refused; and the daemon's verify job
//! using the plan's share; the `stored` depth (`--depth`, `verify.depth`).
//! Real binary, real local repository.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::bin::{command, fails, json, ok, s, text};
use common::files::{files_under, flip};
use serde_json::Value;

struct Repo {
    dir: tempfile::TempDir,
}

impl Repo {
    /// A files plan (`app.yaml`, plan `app`, `verify_yaml` appended) and a
    /// repository of `packs` packs: that many backups, each adding one file
    /// of a single chunk (under the chunker's 256 KiB minimum), so one pack.
    fn with_packs(packs: usize, verify_yaml: &str) -> Repo {
        let repo = Repo {
            dir: tempfile::tempdir().unwrap(),
        };
        let src = repo.path("src");
        std::fs::create_dir(&src).unwrap();
        std::fs::write(
            repo.plan(),
            format!(
                "name: app\nsource: {{type: files, path: {}}}\nrepository: {{url: {}}}\nschedule: {{backup: '0 * * * *'}}\nlock: {{mode: compliance, days: 7}}\nretention: {{keep_last: 24}}\n{verify_yaml}",
                src.display(),
                repo.path("repo").display()
            ),
        )
        .unwrap();
        for i in 0..packs {
            std::fs::write(
                src.join(format!("f{i}.bin")),
                common::data(i as u64, 200_000),
            )
            .unwrap();
            ok(&["backup", "--plan", s(&repo.plan())]);
        }
        assert_eq!(repo.packs().len(), packs, "one pack per backup");
        repo
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn plan(&self) -> PathBuf {
        self.path("app.yaml")
    }

    /// Pack keys (`packs/3f/3f2a…`), in id order.
    fn packs(&self) -> Vec<String> {
        let root = self.path("repo/objects");
        files_under(&root.join("packs"))
            .iter()
            .map(|p| p.strip_prefix(&root).unwrap().display().to_string())
            .collect()
    }

    fn object(&self, key: &str) -> PathBuf {
        self.path("repo/objects").join(key)
    }

    /// `holdfast verify --plan app.yaml --json` with `args`; the exit code
    /// and the report (printed whether problems were found or not).
    fn verify(&self, args: &[&str]) -> (i32, Value) {
        let out = command()
            .args(["verify", "--plan", s(&self.plan()), "--json"])
            .args(args)
            .output()
            .unwrap();
        let code = out.status.code().unwrap();
        assert!(code == 0 || code == 5, "{}", text(&out));
        let report =
            serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out)));
        (code, report)
    }
}

/// The objects a report names.
fn named(report: &Value) -> Vec<&str> {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["object"].as_str().unwrap())
        .collect()
}

fn problem<'a>(report: &'a Value, object: &str) -> &'a Value {
    report["problems"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["object"] == object)
        .unwrap_or_else(|| panic!("{object} not named: {report}"))
}

#[test]
fn a_rotating_sample_finds_a_corrupt_pack_once_per_turn_and_all_or_100_percent_at_once() {
    let repo = Repo::with_packs(10, "");
    let (code, full) = repo.verify(&[]);
    assert_eq!((code, &full["sample"]), (0, &Value::Null), "{full}");
    assert_eq!(full["packs_checked"], 10, "{full}");

    let packs = repo.packs();
    let bad = &packs[3];
    flip(&repo.object(bad), |len| len / 2, 0x04);

    for (sample, reported) in [
        ("all", Value::Null),
        (
            "100%",
            serde_json::json!({"percent": 100, "packs_read": 10, "packs_total": 10}),
        ),
    ] {
        let (code, mut v) = repo.verify(&["--sample", sample, "--state", s(&repo.path("st"))]);
        assert_eq!(code, 5, "{sample}: {v}");
        assert_eq!(named(&v), vec![bad.as_str()], "{sample}: {v}");
        assert_eq!(problem(&v, bad)["kind"], "corrupt");
        assert_eq!(v["packs_checked"], 10, "{sample}: {v}");
        if let Some(fields) = v["sample"].as_object_mut() {
            fields.remove("cursor");
        }
        assert_eq!(v["sample"], reported, "{sample}");
    }

    // 20% of 10 packs is 2 a run: five runs are one turn of the ring, in
    // stretches that do not overlap, so the bad pack is read exactly once
    // per turn, wherever the first run started.
    let state = repo.path("state");
    for turn in 0..2 {
        let mut found = Vec::new();
        for run in 0..5 {
            let (code, v) = repo.verify(&["--sample", "20%", "--state", s(&state)]);
            let sample = &v["sample"];
            assert_eq!(sample["percent"], 20, "{v}");
            assert_eq!(sample["packs_read"], 2, "{v}");
            assert_eq!(sample["packs_total"], 10, "{v}");
            assert_eq!(v["packs_checked"], 2, "{v}");
            assert_eq!(v["snapshots_checked"], 10, "every manifest is read: {v}");
            if code == 5 {
                assert_eq!(named(&v), vec![bad.as_str()], "{v}");
                assert!(
                    problem(&v, bad)["detail"]
                        .as_str()
                        .unwrap()
                        .contains("SHA-256"),
                    "{v}"
                );
                found.push(run);
            } else {
                assert_eq!(v["problems"], serde_json::json!([]), "{v}");
            }
        }
        assert_eq!(found.len(), 1, "turn {turn}: found in runs {found:?}");
    }
    assert!(state.join("verify-cursors/app.json").is_file());

    let out = command()
        .args(["verify", "--plan", s(&repo.plan()), "--sample", "20%"])
        .args(["--state", s(&state)])
        .output()
        .unwrap();
    let said = text(&out);
    assert!(
        said.contains("a 20% sample: 2 of 10 packs read (the others' presence checked)"),
        "{said}"
    );
}

#[test]
fn a_missing_or_truncated_pack_is_named_by_a_sample_that_does_not_read_it() {
    let repo = Repo::with_packs(10, "");
    let packs = repo.packs();
    let id = |key: &str| key.rsplit('/').next().unwrap().to_string();
    let (gone, short) = (&packs[6], &packs[2]);
    std::fs::remove_file(repo.object(gone)).unwrap();
    let bytes = std::fs::read(repo.object(short)).unwrap();
    std::fs::remove_file(repo.object(short)).unwrap();
    std::fs::write(repo.object(short), &bytes[..bytes.len() - 1]).unwrap();

    // The last run stopped at the missing pack: this one reads the pack
    // after it, and only that one.
    let state = repo.path("state");
    std::fs::create_dir_all(state.join("verify-cursors")).unwrap();
    let cursor = serde_json::json!({
        "plan": "app", "repository": "file:///elsewhere", "cursor": id(gone),
        "saved_at": "2026-01-01T00:00:00Z",
    });
    std::fs::write(state.join("verify-cursors/app.json"), cursor.to_string()).unwrap();
    let (code, v) = repo.verify(&["--sample", "10%", "--state", s(&state)]);
    assert_eq!(code, 5, "{v}");
    assert_eq!(v["sample"]["packs_read"], 1, "{v}");
    assert_eq!(v["sample"]["cursor"], id(&packs[7]).as_str(), "{v}");
    let missing = problem(&v, gone);
    assert_eq!(missing["kind"], "missing", "{v}");
    assert!(
        missing["detail"].as_str().unwrap().contains("presence"),
        "{v}"
    );
    assert!(
        !missing["snapshots"].as_array().unwrap().is_empty(),
        "the snapshots it breaks: {v}"
    );
    let truncated = problem(&v, short);
    assert_eq!(truncated["kind"], "corrupt", "{v}");
    let detail = truncated["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!(
            "is {} bytes, its index says {}",
            bytes.len() - 1,
            bytes.len()
        )),
        "{v}"
    );
    assert_eq!(named(&v).len(), 2, "{v}");

    // The cursor moved on: the next run reads the pack after that one.
    let saved: Value =
        serde_json::from_slice(&std::fs::read(state.join("verify-cursors/app.json")).unwrap())
            .unwrap();
    assert_eq!(saved["cursor"], id(&packs[7]).as_str());
    let (_, next) = repo.verify(&["--sample", "10%", "--state", s(&state)]);
    assert_eq!(next["sample"]["cursor"], id(&packs[8]).as_str(), "{next}");
}

#[test]
fn the_plan_sets_the_share_the_flag_overrides_it_and_bad_values_are_refused() {
    let repo = Repo::with_packs(3, "verify: {sample: 20%}\n");
    let plan = repo.plan();
    let plan = s(&plan);
    let checked = ok(&["plan", "check", plan]);
    assert!(checked.contains("; verify reads 20% of packs"), "{checked}");
    let checked = json(&["plan", "check", plan, "--json"]);
    assert_eq!(checked[0]["plan"]["verify"]["sample"], "20%", "{checked}");

    let state = repo.path("state");
    let (code, v) = repo.verify(&["--state", s(&state)]);
    assert_eq!(code, 0, "{v}");
    assert_eq!(v["sample"]["percent"], 20, "{v}");
    assert_eq!(
        v["sample"]["packs_read"], 1,
        "20% of 3 rounds up to one: {v}"
    );
    assert_eq!(v["sample"]["packs_total"], 3, "{v}");
    let (_, v) = repo.verify(&["--sample", "all"]);
    assert_eq!(
        (&v["sample"], &v["packs_checked"]),
        (&Value::Null, &Value::from(3)),
        "{v}"
    );
    let (_, v) = repo.verify(&["--sample", "0.5%", "--state", s(&state)]);
    assert_eq!(v["sample"]["percent"], 0.5, "{v}");
    assert_eq!(v["sample"]["packs_read"], 1, "at least one pack: {v}");

    for (bad, says) in [
        ("0%", "more than 0%"),
        ("150%", "more than 100%"),
        ("10", "% sign"),
        ("ten%", "not a percentage"),
        ("1.234%", "two decimals"),
    ] {
        let msg = fails(&["verify", "--plan", plan, "--sample", bad], 2);
        assert!(
            msg.contains("--sample") && msg.contains(says),
            "{bad}: {msg}"
        );
    }

    let text = std::fs::read_to_string(repo.plan()).unwrap();
    std::fs::write(repo.plan(), text.replace("20%", "20")).unwrap();
    let msg = fails(&["verify", "--plan", plan], 3);
    assert!(
        msg.contains("app.yaml:7:") && msg.contains("verify.sample: 20 has no % sign"),
        "{msg}"
    );
}

#[test]
fn the_daemons_verify_job_reads_the_plans_share_and_keeps_its_cursor() {
    let repo = Repo::with_packs(4, "verify: {sample: 25%}\n");
    let state = repo.path("state");
    let log = repo.path("daemon.log");
    let mut child = command()
        .env("HOLDFAST_LOG", "info")
        .args(["daemon", "--once", "--listen", "127.0.0.1:0", "--plans"])
        .arg(repo.plan())
        .arg("--state")
        .arg(&state)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "daemon --once still running after 120 s: {}",
                std::fs::read_to_string(&log).unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{said}");
    // The backup added a fifth snapshot, no new pack (nothing changed).
    assert!(
        said.contains("verify done: 5 snapshots, sample of 1 of 4 packs (25%)"),
        "{said}"
    );
    assert!(state.join("verify-cursors/app.json").is_file(), "{said}");
}

/// `verify --depth stored`, and the plan's `verify.depth`: each pack read is
/// checked against its name (SHA-256) and every needed chunk's place in it,
/// and no chunk is decoded, as pgBackRest checks a backup by its repository
/// checksums. A byte changed in a pack is still found and named, at either
/// depth; the flag overrides the plan; bad values are refused by name.
#[test]
fn the_stored_depth_checks_packs_against_their_names_and_the_flag_overrides_the_plan() {
    let repo = Repo::with_packs(3, "verify: {depth: stored}\n");
    let plan = repo.plan();
    let plan = s(&plan);
    let checked = ok(&["plan", "check", plan]);
    assert!(
        checked.contains("; verify checks stored bytes only"),
        "{checked}"
    );
    let checked = json(&["plan", "check", plan, "--json"]);
    assert_eq!(checked[0]["plan"]["verify"]["depth"], "stored", "{checked}");

    let (code, v) = repo.verify(&[]);
    assert_eq!((code, &v["depth"]), (0, &Value::from("stored")), "{v}");
    assert_eq!(
        (&v["packs_checked"], &v["chunks_checked"]),
        (&3.into(), &3.into()),
        "{v}"
    );
    let said = ok(&["verify", "--plan", plan]);
    assert!(
        said.contains("3 chunks placed (stored bytes checked, chunks not decoded)"),
        "{said}"
    );
    let (code, v) = repo.verify(&["--depth", "chunks"]);
    assert_eq!((code, &v["depth"]), (0, &Value::from("chunks")), "{v}");
    let said = ok(&["verify", "--plan", plan, "--depth", "chunks"]);
    assert!(said.contains(": 3 packs, 3 chunks, "), "{said}");

    let bad = &repo.packs()[1];
    flip(&repo.object(bad), |len| len / 2, 0x04);
    for depth in ["stored", "chunks"] {
        let (code, v) = repo.verify(&["--depth", depth]);
        assert_eq!(code, 5, "{depth}: {v}");
        assert_eq!(named(&v), vec![bad.as_str()], "{depth}: {v}");
        let p = problem(&v, bad);
        assert_eq!(p["kind"], "corrupt", "{depth}: {v}");
        assert!(
            p["detail"].as_str().unwrap().contains("SHA-256"),
            "{depth}: {v}"
        );
    }

    let msg = fails(&["verify", "--plan", plan, "--depth", "deep"], 2);
    assert!(
        msg.contains("--depth") && msg.contains("`deep` is not a verify depth"),
        "{msg}"
    );
    let text = std::fs::read_to_string(repo.plan()).unwrap();
    std::fs::write(repo.plan(), text.replace("depth: stored", "depth: quick")).unwrap();
    let msg = fails(&["verify", "--plan", plan], 3);
    assert!(
        msg.contains("app.yaml:7:") && msg.contains("verify.depth") && msg.contains("`quick`"),
        "{msg}"
    );
}
