//! The built `holdfast` binary, run as the tests' own user or as another OS
//! user, and the checks every test makes on what it printed and how it exited.

use std::path::Path;
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// The repository passphrase every test's holdfast gets through
/// `HOLDFAST_KEY` (plans in tests say nothing about the key, as a plan that
/// takes its key from the environment does).
pub const TEST_KEY: &str = "holdfast-test-passphrase-correct-horse-battery-staple";

/// [`TEST_KEY`] for tests that open a repository in process.
pub fn test_repo_key() -> holdfast::repository::RepoKey {
    holdfast::repository::RepoKey::Passphrase(holdfast::secret::Secret::new(TEST_KEY))
}

/// holdfast with warnings only on stderr, the test key, ready for arguments.
pub fn command() -> Command {
    let mut c = Command::new(BIN);
    c.env("HOLDFAST_LOG", "warn").env("HOLDFAST_KEY", TEST_KEY);
    c
}

/// `program` run as the OS user `user` (the tests run as root).
pub fn run_as(user: &str, program: &str) -> Command {
    let mut c = Command::new("runuser");
    c.args(["-u", user, "--", program]);
    c
}

/// holdfast as the OS user `user`, with `vars` set: through env(1), since
/// runuser does not pass on the caller's environment as given.
pub fn command_as(user: &str, vars: &[(&str, &str)]) -> Command {
    let mut c = run_as(user, "env");
    c.arg("HOLDFAST_LOG=warn")
        .arg(format!("HOLDFAST_KEY={TEST_KEY}"))
        .args(vars.iter().map(|(k, v)| format!("{k}={v}")))
        .arg(BIN);
    c
}

pub fn holdfast(args: &[&str]) -> Output {
    command().args(args).output().expect("holdfast runs")
}

/// holdfast as the `postgres` OS user, as it runs on a database host.
pub fn holdfast_as_postgres(args: &[&str]) -> Output {
    command_as("postgres", &[])
        .args(args)
        .output()
        .expect("runuser runs")
}

/// Runs holdfast with `args`; it must succeed. Its stdout.
pub fn ok(args: &[&str]) -> String {
    stdout_of(&holdfast(args))
}

/// Runs holdfast with `args`; it must exit with `code`. All it said.
pub fn fails(args: &[&str], code: i32) -> String {
    said_by(&holdfast(args), code)
}

/// Runs holdfast with `args` (which ask for `--json`); it must succeed.
pub fn json(args: &[&str]) -> serde_json::Value {
    json_of(&holdfast(args))
}

/// `out` succeeded; its stdout.
pub fn stdout_of(out: &Output) -> String {
    assert!(out.status.success(), "holdfast failed: {}", text(out));
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `out` exited with `code`; all it said, stderr then stdout.
pub fn said_by(out: &Output, code: i32) -> String {
    assert_eq!(out.status.code(), Some(code), "{}", text(out));
    text(out)
}

/// `out` exited with `code` and said `needle` (on stderr or stdout).
pub fn exits_saying(out: &Output, code: i32, needle: &str) {
    let said = said_by(out, code);
    assert!(said.contains(needle), "{said}");
}

/// `out` succeeded and printed one JSON document.
pub fn json_of(out: &Output) -> serde_json::Value {
    serde_json::from_str(&stdout_of(out)).unwrap_or_else(|e| panic!("{e}: {}", text(out)))
}

/// stderr then stdout, for assertion messages and searching.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    )
}

/// A path as a command-line argument.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}
