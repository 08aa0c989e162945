//! Restore a plan's snapshot, or its database as of a point in time, or one
//! logical dump: the plan's engine does the work.

use crate::engine::{engine_for, DumpRequest, RestoreReport, RestoreRequest};
use crate::error::Error;
use crate::plan::Plan;

pub async fn restore(plan: &Plan, req: &RestoreRequest) -> Result<RestoreReport, Error> {
    let engine = engine_for(plan)?;
    let repo = super::open_repo(plan).await?;
    Ok(engine.restore(&repo, plan, req).await?)
}

pub async fn restore_dump(plan: &Plan, req: &DumpRequest) -> Result<RestoreReport, Error> {
    let engine = engine_for(plan)?;
    let repo = super::open_repo(plan).await?;
    Ok(engine.restore_dump(&repo, plan, req).await?)
}
