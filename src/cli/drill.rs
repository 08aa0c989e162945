//! `holdfast drill` and `holdfast drills`.

use std::path::PathBuf;

use clap::Args;

use super::render::{human_bytes, json as print_json, outln};
use super::PlanArg;
use crate::engine::when::parse_time;
use crate::error::{Error, Exit};
use crate::ops::drill::{DrillRequest, DrillTarget};
use crate::progress::ProgressMode;

#[derive(Debug, Args)]
pub(crate) struct DrillArgs {
    #[command(flatten)]
    pub plan: PlanArg,
    /// Restore the state as of this instant (the same forms as `restore --at`).
    #[arg(long, value_name = "TIME", conflicts_with_all = ["latest", "random"])]
    pub at: Option<String>,
    /// Restore the newest restorable point, ignoring the plan's
    /// `drill.target` (without --at, --latest or --random, the plan decides:
    /// `rewind` before now, a random point, or the newest point).
    #[arg(long, conflicts_with = "random")]
    pub latest: bool,
    /// Restore a random point: a uniformly random instant inside the
    /// restorable windows (PostgreSQL with WAL archiving), or a random
    /// snapshot (SQLite, files), so old snapshots and long WAL chains get
    /// drilled too.
    #[arg(long)]
    pub random: bool,
    /// With --random: draw with this seed (the report records every random
    /// drill's seed); the same seed picks the same point while the
    /// repository's windows and snapshots are the same.
    #[arg(long, value_name = "N", requires = "random")]
    pub seed: Option<u64>,
    /// The local folder for the report's JSON and Markdown (default:
    /// /var/lib/holdfast/drills as root, else $XDG_STATE_HOME/holdfast/drills).
    #[arg(long, value_name = "DIR")]
    pub reports: Option<PathBuf>,
    /// Print the report as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

pub async fn run(args: DrillArgs, progress: ProgressMode) -> Result<Exit, Error> {
    let plan = args.plan.load()?;
    let target = match (&args.at, args.latest, args.random) {
        (Some(at), _, _) => DrillTarget::At(
            parse_time(at, plan.schedule.timezone())
                .map_err(|e| Error::from(e).context("--at"))?
                .at,
        ),
        (None, true, _) => DrillTarget::Latest,
        (None, false, true) => DrillTarget::Random { seed: args.seed },
        (None, false, false) => DrillTarget::Plan,
    };
    let req = DrillRequest {
        target,
        reports: args.reports,
    };
    // SIGINT or SIGTERM (Ctrl-C, a CronJob's deadline): dropping the drill
    // stops its scratch server and removes its scratch folder before exit.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| Error::new(Exit::Failure, e))?;
    let drilled = tokio::select! {
        r = crate::ops::drill::drill(&plan, &req, progress) => r,
        _ = tokio::signal::ctrl_c() => Err(interrupted("SIGINT")),
        _ = term.recv() => Err(interrupted("SIGTERM")),
    };
    let report =
        drilled.map_err(|e| e.context(format!("drill of plan {} could not run", plan.name)))?;
    if args.json {
        print_json(&report)?;
    } else {
        outln!(
            "drill {} of plan {}: {} — RTO {:.2}s (max {}s), RPO {}",
            report.id,
            report.plan,
            if report.passed { "PASSED" } else { "FAILED" },
            report.rto_seconds,
            report.max_duration_seconds,
            report
                .rpo_seconds
                .map(|r| format!("{r:.1}s"))
                .unwrap_or_else(|| "unknown".into())
        )?;
        outln!(
            "target {}, snapshot {}, {} restored in {} file(s), every chunk verified",
            report.target,
            report.snapshot.as_deref().unwrap_or("none"),
            human_bytes(report.bytes_restored),
            report.files_verified
        )?;
        let phases: Vec<String> = report
            .phases
            .iter()
            .map(|p| format!("{} {:.2}s", p.name, p.seconds))
            .collect();
        outln!("phases: {}", phases.join(", "))?;
        outln!(
            "checks: {} passed, {} failed",
            report.checks_passed,
            report.checks_failed
        )?;
        for c in &report.checks {
            outln!(
                "  {} {} ({}): {}",
                if c.passed { "ok  " } else { "FAIL" },
                c.name,
                c.kind,
                c.detail
            )?;
        }
        for n in &report.notes {
            outln!("note: {n}")?;
        }
        match &report.record_key {
            Some(k) => outln!("recorded in the repository as {k}")?,
            None => outln!("NOT recorded in the repository")?,
        }
    }
    if report.passed {
        Ok(Exit::Ok)
    } else {
        for f in &report.failures {
            eprintln!(
                "error: drill {} of plan {} failed: {f}",
                report.id, report.plan
            );
        }
        Ok(Exit::DrillFailed)
    }
}

pub async fn list(plan: &PlanArg, json: bool) -> Result<Exit, Error> {
    let plan = plan.load()?;
    let records = crate::ops::drill::history(&plan).await?;
    let unreadable = records.iter().filter(|r| r.error.is_some()).count();
    for r in &records {
        if let Some(e) = &r.error {
            eprintln!("error: {e}");
        }
    }
    if json {
        print_json(&records)?;
    } else if records.is_empty() {
        outln!("plan {} has no recorded drills", plan.name)?;
    } else {
        outln!(
            "{:<24} {:<16} {:<7} {:>9} {:>9} {:<9} TREND (RTO vs previous / median)",
            "STARTED (UTC)",
            "ID",
            "RESULT",
            "RTO",
            "RPO",
            "SNAPSHOT"
        )?;
        for r in &records {
            let Some(rep) = &r.report else { continue };
            let trend = r
                .trend
                .as_ref()
                .map(|t| {
                    format!(
                        "{:+.2}s ({:+.0}%) / {:+.2}s ({:+.0}%)",
                        t.vs_previous_seconds,
                        t.vs_previous_percent,
                        t.vs_median_seconds,
                        t.vs_median_percent
                    )
                })
                .unwrap_or_else(|| "-".into());
            outln!(
                "{:<24} {:<16} {:<7} {:>8.2}s {:>9} {:<9} {}",
                rep.started_at.format("%Y-%m-%d %H:%M:%S"),
                rep.id,
                if rep.passed { "passed" } else { "FAILED" },
                rep.rto_seconds,
                rep.rpo_seconds
                    .map(|r| format!("{r:.1}s"))
                    .unwrap_or_else(|| "-".into()),
                rep.snapshot.as_deref().unwrap_or("-"),
                trend
            )?;
        }
    }
    if unreadable > 0 {
        return Err(Error::new(
            Exit::Verify,
            anyhow::anyhow!(
                "{unreadable} drill record(s) of plan {} could not be read",
                plan.name
            ),
        ));
    }
    Ok(Exit::Ok)
}

fn interrupted(signal: &str) -> Error {
    Error::new(
        Exit::Failure,
        anyhow::anyhow!(
            "interrupted by {signal}: the scratch copy was stopped and removed, nothing was recorded"
        ),
    )
}
