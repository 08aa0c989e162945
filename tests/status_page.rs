//! The daemon's status page `/`, as on-call sees it: rendered by a real
//! browser (Debian's headless Chromium) from a real daemon running three
//! SQLite plans — one backed up only, one with a drill history (a failed
//! drill, a passed one, and one the daemon runs itself), one whose file does
//! not validate — and compared with what `/status` says.
//!
//! Chromium missing fails the test and says how to install it
//! (`scripts/test` does); `HOLDFAST_SKIP_BROWSER=1` skips it, loudly.
//! `HOLDFAST_PAGE_SCREENSHOT=FILE` keeps a copy of the page's screenshot.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{Duration as Span, Timelike, Utc};
use common::bin::{fails, ok, s};
use common::daemon::Daemon;
use common::make_db;
use serde_json::Value;

/// The longest one Chromium run may take before it is killed.
const BROWSER_DEADLINE: Duration = Duration::from_secs(60);

/// Chromium's path, `None` when skipping is asked for; a missing browser
/// otherwise fails the test.
fn chromium() -> Option<PathBuf> {
    if std::env::var("HOLDFAST_SKIP_BROWSER").as_deref() == Ok("1") {
        eprintln!(
            "\n!!! HOLDFAST_SKIP_BROWSER=1: the status page is NOT checked in a browser !!!\n"
        );
        return None;
    }
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .flat_map(|dir| ["chromium", "chromium-browser"].map(|b| dir.join(b)))
            .find(|p| p.is_file())
    });
    Some(found.unwrap_or_else(|| {
        panic!(
            "chromium is not installed: `apt-get install chromium` (Debian; scripts/test installs it), \
             or set HOLDFAST_SKIP_BROWSER=1 to skip this test"
        )
    }))
}

/// Runs headless Chromium on `url` with `args`; its stdout. Killed, failing
/// the test, after [`BROWSER_DEADLINE`].
fn browse(chromium: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--no-first-run",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("unable to run {}: {e}", chromium.display()));
    // Read both pipes on threads of their own, so a full pipe cannot stall it.
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BROWSER_DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "chromium {args:?} {url} did not finish within {}s; killed. stderr:\n{}",
                BROWSER_DEADLINE.as_secs(),
                err.join().unwrap()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        status.success(),
        "chromium {args:?} {url} failed ({status}):\n{err}"
    );
    out
}

/// The `<tr>` of plan `name` in the rendered DOM.
fn row<'a>(dom: &'a str, name: &str) -> &'a str {
    let start = dom
        .find(&format!("<tr data-plan=\"{name}\""))
        .unwrap_or_else(|| panic!("no row for plan {name} in the page:\n{dom}"));
    let end = start + dom[start..].find("</tr>").expect("the row ends");
    &dom[start..end]
}

fn plan_text(name: &str, schedule: &str, drill: &str) -> String {
    format!(
        "name: {name}\nsource: {{type: sqlite, path: ../{name}.db}}\nrepository: {{url: ../repo-{name}}}\n\
         schedule: {{{schedule}}}\nlock: {{mode: none}}\nretention: {{keep_last: 3}}\n{drill}"
    )
}

fn drill_section(scratch: &Path, expect: &str) -> String {
    format!(
        "drill:\n  scratch_dir: {}\n  checks:\n    - name: orders exist\n      sql: \"SELECT count(*) FROM orders\"\n      expect: {{{expect}}}\n",
        scratch.display()
    )
}

#[test]
fn the_status_page_in_headless_chromium_has_every_plan_with_its_backup_drills_and_errors() {
    let Some(chromium) = chromium() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let plans = dir.path().join("plans");
    let scratch = dir.path().join("scratch");
    let reports = dir.path().join("reports");
    std::fs::create_dir_all(&plans).unwrap();
    std::fs::create_dir_all(&scratch).unwrap();
    for name in ["app", "drilled"] {
        make_db(&dir.path().join(format!("{name}.db")), 200);
    }
    // Backups once, when the daemon first sees the plan (the cron is yearly).
    let yearly = "backup: '0 0 1 1 *'";
    std::fs::write(plans.join("app.yaml"), plan_text("app", yearly, "")).unwrap();

    // "drilled" has a history before the daemon starts: a drill whose check
    // could not hold, then one that passed.
    let drilled = plans.join("drilled.yaml");
    std::fs::write(
        &drilled,
        plan_text(
            "drilled",
            yearly,
            &drill_section(&scratch, "equals: \"-1\""),
        ),
    )
    .unwrap();
    ok(&["backup", "--plan", s(&drilled)]);
    fails(
        &["drill", "--plan", s(&drilled), "--reports", s(&reports)],
        11,
    );
    std::fs::write(
        &drilled,
        plan_text("drilled", yearly, &drill_section(&scratch, "at_least: 1")),
    )
    .unwrap();
    ok(&["drill", "--plan", s(&drilled), "--reports", s(&reports)]);
    // The daemon runs the third drill itself, once, a few seconds after it starts.
    let at = Utc::now() + Span::seconds(5);
    let once = format!(
        "{yearly}, drill: '{} {} {} * * *'",
        at.second(),
        at.minute(),
        at.hour()
    );
    std::fs::write(
        &drilled,
        plan_text("drilled", &once, &drill_section(&scratch, "at_least: 1")),
    )
    .unwrap();

    // And a file that does not validate.
    std::fs::write(
        plans.join("broken.yaml"),
        plan_text("broken", yearly, "").replace("keep_last", "keep_lsat"),
    )
    .unwrap();

    let d = Daemon::start(&plans, &dir.path().join("state"), &[]);
    d.wait_for("the backups and the daemon's drill", |d| {
        let st = d.status();
        let plan = |n: &str| {
            st["plans"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["plan"] == n)
                .cloned()
                .unwrap_or(Value::Null)
        };
        let (app, drilled) = (plan("app"), plan("drilled"));
        app["last_runs"]["backup"]["outcome"] == "ok"
            && drilled["last_runs"]["backup"]["outcome"] == "ok"
            && drilled["last_runs"]["drill"]["outcome"] == "ok"
            && drilled["drills"].as_array().is_some_and(|d| d.len() == 3)
            && app["running"].is_null()
            && drilled["running"].is_null()
    });
    let status = d.status();

    // What /status says, which the page must show.
    let listed: Vec<&Value> = status["plans"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), 3, "{status}");
    let drills = d.plan("drilled")["drills"].clone();
    let outcomes: Vec<bool> = drills
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["passed"].as_bool().unwrap())
        .collect();
    assert_eq!(outcomes, [false, true, true], "oldest first: {drills}");
    // The daemon's own drill is the newest.
    let last_drill_summary = d.plan("drilled")["last_runs"]["drill"]["summary"]
        .as_str()
        .unwrap()
        .to_string();
    let newest_id = drills[2]["id"].as_str().unwrap();
    assert!(
        last_drill_summary.contains(newest_id),
        "{last_drill_summary} / {drills}"
    );

    // The page over HTTP: HTML, and no script at all.
    let (head, body) = d.request("/").expect("/ answers");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: text/html; charset=utf-8"),
        "{head}"
    );
    assert!(!body.to_ascii_lowercase().contains("<script"), "{body}");

    // The page in the browser.
    let profile = tempfile::tempdir().unwrap();
    let dom = browse(&chromium, profile.path(), &["--dump-dom"], &d.url("/"));
    assert!(dom.contains("<h1>holdfast</h1>"), "{dom}");
    assert!(dom.contains("3 plans: 0 failing, 1 invalid"), "{dom}");
    for p in &listed {
        let name = p["plan"].as_str().unwrap();
        let r = row(&dom, name);
        if let Some(snapshot) = p["last_backup"]["snapshot"].as_str() {
            assert!(
                r.contains(&format!("<code>{snapshot}</code>")),
                "{name}: snapshot {snapshot} of /status not on the page: {r}"
            );
            assert!(r.contains(" ago") || r.contains("just now"), "{r}");
        }
    }
    let app = row(&dom, "app");
    assert!(app.contains("data-health=\"ok\""), "{app}");
    assert!(app.contains("no drills recorded"), "{app}");
    assert!(!app.contains("<svg"), "{app}");

    let dr = row(&dom, "drilled");
    // An older drill failed; the newest passed: the plan is healthy.
    assert!(dr.contains("data-health=\"ok\""), "{dr}");
    assert!(dr.contains("<span class=\"ok\">passed</span> RTO"), "{dr}");
    assert!(dr.contains("(3 drills)"), "{dr}");
    let svg_start = dr.find("<svg").expect("an RTO chart");
    let svg = &dr[svg_start..svg_start + dr[svg_start..].find("</svg>").unwrap()];
    assert!(svg.contains("data-drills=\"3\""), "{svg}");
    assert_eq!(svg.matches("<circle class=\"failed\"").count(), 1, "{svg}");
    assert_eq!(svg.matches("<circle class=\"passed\"").count(), 2, "{svg}");
    assert!(svg.contains("<polyline"), "{svg}");
    assert!(svg.contains(&format!("drill {newest_id} ")), "{svg}");
    assert!(
        svg.contains("class=\"max\"") && svg.contains("class=\"min\""),
        "{svg}"
    );

    let broken = row(&dom, "broken");
    assert!(broken.contains("data-health=\"invalid\""), "{broken}");
    assert!(
        broken.contains("invalid: ") && broken.contains("keep_lsat"),
        "{broken}"
    );
    assert!(broken.contains("not scheduled"), "{broken}");

    // A screenshot, for people to look at.
    let shot = dir.path().join("page.png");
    browse(
        &chromium,
        profile.path(),
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,800",
            "--hide-scrollbars",
        ],
        &d.url("/"),
    );
    let png = std::fs::read(&shot).expect("chromium wrote the screenshot");
    assert!(
        png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );
    if let Some(keep) = std::env::var_os("HOLDFAST_PAGE_SCREENSHOT") {
        std::fs::copy(&shot, &keep).unwrap_or_else(|e| panic!("copying to {keep:?}: {e}"));
        eprintln!(
            "the status page's screenshot: {}",
            Path::new(&keep).display()
        );
    }
}
