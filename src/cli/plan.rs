//! `holdfast plan check`

use std::path::PathBuf;

use super::render::{json as print_json, outln};
use crate::error::{Error, Exit};

pub fn check(paths: &[PathBuf], json: bool) -> Result<Exit, Error> {
    let now = crate::ops::plan_check::now();
    let results = crate::ops::plan_check::check(paths);
    let mut failed = 0;
    let mut out = Vec::new();
    for checked in &results {
        let path = &checked.file;
        match &checked.result {
            Ok(plan) => {
                if json {
                    out.push(serde_json::json!({"file": path, "ok": true, "plan": plan.summary_json(now)}));
                } else {
                    outln!("ok    {}", plan.summary(now))?;
                }
                for w in plan.warnings() {
                    eprintln!("warning: {w}");
                }
            }
            Err(e) => {
                failed += 1;
                if json {
                    out.push(
                        serde_json::json!({"file": path, "ok": false, "error": e.to_string()}),
                    );
                } else {
                    outln!("error {e}")?;
                }
            }
        }
    }
    if json {
        print_json(&out)?;
    } else {
        outln!("{} plan(s) checked, {} with errors", results.len(), failed)?;
    }
    Ok(if failed == 0 { Exit::Ok } else { Exit::Plan })
}
