//! `holdfast repo init`

use super::render::{json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};
use crate::plan::LockSetting;

pub async fn init(plan: &PlanArg, json: bool) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let report = crate::ops::doctor::repo_init(&plan).await?;
    if json {
        print_json(&report)?;
    } else {
        if let Some(b) = &report.bucket {
            outln!(
                "bucket {}: {}versioning {}, Object Lock {}",
                report.repository,
                if report.bucket_created {
                    "created; "
                } else {
                    ""
                },
                b.versioning.as_deref().unwrap_or("off"),
                if b.object_lock {
                    "enabled"
                } else {
                    "NOT enabled"
                }
            )?;
        }
        outln!(
            "repository {}: {}",
            report.repository,
            if report.repository_created {
                "created"
            } else {
                "already initialised"
            }
        )?;
    }
    if plan.key == crate::plan::KeySpec::Unencrypted {
        eprintln!("WARNING: plan {} has repository.encryption none: its repository is NOT encrypted or authenticated; anyone with write access to it can forge snapshots that restore as real", plan.name);
    }
    if plan.lock.mode == LockSetting::None {
        eprintln!("WARNING: plan {} has lock.mode none: its backups are NOT immutable; anyone holding the repository's credentials can delete all of them", plan.name);
    }
    Ok(Exit::Ok)
}
