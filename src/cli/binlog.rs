//! `holdfast binlog-archive`: a MariaDB plan's binlog archiver in the
//! foreground, for users without the daemon. SIGTERM or Ctrl-C stops it
//! after pushing what is complete.

use std::path::PathBuf;

use tokio::sync::watch;

use super::render::{json as print_json, outln};
use super::PlanArg;
use crate::error::{Error, Exit};

pub async fn archive(plan: &PlanArg, state: Option<PathBuf>, json: bool) -> Result<Exit, Error> {
    let plan = plan.load()?;
    crate::engine::mariadb::archive::check_archiving(&plan)?;
    let state = match state {
        Some(s) => s,
        None => crate::ops::binlog::state_dir_for(&super::daemon::default_state_dir()?, &plan),
    };
    let (stop_tx, stop) = watch::channel(false);
    let (status, _) = watch::channel(Default::default());
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::new(Exit::Failure, e))?;
    tokio::spawn(async move {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("stopping: pushing what is complete");
        let _ = stop_tx.send(true);
    });
    let report = crate::ops::binlog::archive(&plan, state, &status, stop).await?;
    if json {
        print_json(&report)?;
    } else {
        outln!(
            "binlog archiving of plan {} stopped: {} complete file(s), {} part(s), {} bytes; last {} up to offset {}{}",
            plan.name,
            report.completed,
            report.parts,
            report.bytes,
            report.file.as_deref().unwrap_or("-"),
            report.archived_offset,
            if report.gap.is_empty() {
                String::new()
            } else {
                format!("; GAP: {} missing", report.gap.join(", "))
            }
        )?;
    }
    Ok(Exit::Ok)
}
