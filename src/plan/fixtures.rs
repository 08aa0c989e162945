//! Test-only: the minimal plan the unit tests of the other files start from,
//! parsed as if read from `/srv/plans/app.yaml` with an empty environment.

use std::path::Path;

use super::{Plan, PlanError};

fn no_env(_: &str) -> Option<String> {
    None
}

pub(super) const MINIMAL: &str = "name: app\nsource: {type: sqlite, path: app.db}\nrepository: {url: ../repo}\nschedule: {backup: '0 * * * *'}\nlock: {mode: compliance, days: 7}\nretention: {keep_last: 24, keep_daily: 7}\n";

pub(super) fn parse(text: &str) -> Result<Plan, PlanError> {
    Plan::parse(text, Path::new("/srv/plans/app.yaml"), &no_env)
}
