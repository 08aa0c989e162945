//! The daemon's Prometheus metrics, `holdfast_<subject>_<unit>`, every one
//! labelled with `plan` (the names the alert rules in `deploy/prometheus`
//! use; the table is in `docs/daemon.md`). Archive, lock-coverage and drill
//! gauges are registered here so the names exist in one place; the parts
//! that measure them set them.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlanLabel {
    pub plan: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JobLabel {
    pub plan: String,
    pub job: String,
}

pub type PlanGauge = Family<PlanLabel, Gauge<f64, AtomicU64>>;

macro_rules! metrics {
    ($( $field:ident : $name:literal , $help:literal ; )*) => {
        /// Every per-plan gauge, by field name = metric name without `holdfast_`.
        pub struct Metrics {
            pub registry: Registry,
            $( pub $field: PlanGauge, )*
            pub lock_extensions: Family<PlanLabel, Counter>,
            pub job_running: Family<JobLabel, Gauge>,
        }

        impl Default for Metrics {
            fn default() -> Self {
                let mut registry = Registry::default();
                $(
                    let $field = PlanGauge::default();
                    registry.register($name, $help, $field.clone());
                )*
                let lock_extensions = Family::<PlanLabel, Counter>::default();
                // The text encoder appends `_total` to counters.
                registry.register(
                    "holdfast_lock_extensions",
                    "Object locks extended so that kept snapshots stay immutable",
                    lock_extensions.clone(),
                );
                let job_running = Family::<JobLabel, Gauge>::default();
                registry.register(
                    "holdfast_job_running",
                    "1 while the plan's job (backup, verify, prune, keep-locks, drill) runs",
                    job_running.clone(),
                );
                Metrics { registry, $( $field, )* lock_extensions, job_running }
            }
        }

        impl Metrics {
            /// Drops every series of a plan that is no longer loaded.
            pub fn forget(&self, plan: &str) {
                let l = PlanLabel { plan: plan.to_string() };
                $( self.$field.remove(&l); )*
                self.lock_extensions.remove(&l);
                for job in super::schedule::JobKind::ALL.map(|j| j.as_str()) {
                    self.job_running.remove(&JobLabel { plan: plan.to_string(), job: job.into() });
                }
            }
        }
    };
}

metrics! {
    plan_valid: "holdfast_plan_valid", "1 when the plan file last read validated; 0 while its previous version runs";
    backup_last_success: "holdfast_backup_last_success_timestamp_seconds", "When the last successful backup finished";
    backup_last_failure: "holdfast_backup_last_failure_timestamp_seconds", "When the last failed backup ended";
    backup_duration: "holdfast_backup_duration_seconds", "How long the last successful backup took";
    backup_bytes_read: "holdfast_backup_bytes_read", "Bytes the last backup read from its source";
    backup_bytes_stored: "holdfast_backup_bytes_stored", "Bytes the last backup stored (compressed, new chunks only)";
    backup_bytes_new: "holdfast_backup_bytes_new", "Bytes of new (not deduplicated) data in the last backup";
    backup_interval: "holdfast_backup_interval_seconds", "Seconds between the backup schedule's runs (the next two)";
    snapshots: "holdfast_snapshots", "Snapshots of the plan in its repository";
    rejected_objects: "holdfast_rejected_objects", "Objects under the plan's snapshots that holdfast does not believe (forged, replayed, future-dated, off the hash chain, unreadable): ignored, and reported by verify";
    restorable_oldest: "holdfast_restorable_oldest_timestamp_seconds", "The oldest point a restore can reach";
    restorable_newest: "holdfast_restorable_newest_timestamp_seconds", "The newest point a restore can reach";
    archive_lag: "holdfast_archive_lag_seconds", "How long the oldest WAL segment waiting to be archived has waited; 0 when none waits";
    archive_stalled: "holdfast_archive_stalled", "1 when log archiving makes no progress";
    rpo: "holdfast_rpo_seconds", "Now minus the newest restorable point";
    binlog_archived: "holdfast_binlog_archived_timestamp_seconds", "The newest binlog event archived (MariaDB plans that archive)";
    binlog_gap: "holdfast_binlog_gap", "1 while binlogs are known missing from the archive (purged on the server before archiving, or a hole in the sequence)";
    lock_coverage: "holdfast_lock_coverage_seconds", "Time until the earliest lock end among the snapshots retention keeps";
    verify_last_success: "holdfast_verify_last_success", "1 when the last verify found no problem";
    verify_last: "holdfast_verify_last_timestamp_seconds", "When the last verify ended";
    prune_last: "holdfast_prune_last_timestamp_seconds", "When the last successful prune ended";
    drill_last_success: "holdfast_drill_last_success", "1 when the last drill passed";
    drill_last: "holdfast_drill_last_timestamp_seconds", "When the last drill ended";
    drill_rto: "holdfast_drill_rto_seconds", "The last drill's time to a checked, running restore";
    drill_rpo: "holdfast_drill_rpo_seconds", "The age of the data the last drill restored";
    drill_checks_passed: "holdfast_drill_checks_passed", "Checks the last drill passed";
    drill_checks_failed: "holdfast_drill_checks_failed", "Checks the last drill failed";
}

impl Metrics {
    pub fn set(&self, gauge: &PlanGauge, plan: &str, value: f64) {
        gauge
            .get_or_create(&PlanLabel {
                plan: plan.to_string(),
            })
            .set(value);
    }

    pub fn running(&self, plan: &str, job: &str, on: bool) {
        self.job_running
            .get_or_create(&JobLabel {
                plan: plan.to_string(),
                job: job.to_string(),
            })
            .set(i64::from(on));
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        let m = Metrics::default();
        m.set(&m.plan_valid, "app", 1.0);
        m.set(&m.backup_last_success, "app", 1.7e9);
        m.lock_extensions
            .get_or_create(&PlanLabel { plan: "app".into() })
            .inc_by(3);
        m.running("app", "backup", true);
        let text = m.encode();
        for line in [
            "holdfast_plan_valid{plan=\"app\"} 1",
            "holdfast_backup_last_success_timestamp_seconds{plan=\"app\"} 1700000000",
            "holdfast_lock_extensions_total{plan=\"app\"} 3",
            "holdfast_job_running{plan=\"app\",job=\"backup\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l.starts_with(line)),
                "{line} not in\n{text}"
            );
        }
        m.forget("app");
        assert!(!m.encode().contains("plan=\"app\""));
    }
}
