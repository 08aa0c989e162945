//! Conversions between holdfast's Object Lock terms ([`LockMode`],
//! [`Retention`]) and the SDK's, shared by puts, heads and version checks, so
//! that how a lock date is rounded (always up) is decided once.

use aws_sdk_s3::primitives::DateTime as AwsDateTime;
use aws_sdk_s3::types::ObjectLockMode;
use chrono::{DateTime, TimeZone, Utc};

use crate::store::{LockMode, Retention};

pub(super) fn aws_time(t: DateTime<Utc>) -> AwsDateTime {
    // S3 keeps whole seconds; round up so the lock never ends before `t`.
    let secs = t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0);
    AwsDateTime::from_secs(secs)
}

fn chrono_time(t: &AwsDateTime) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.secs(), t.subsec_nanos()).single()
}

pub(super) fn lock_mode(mode: LockMode) -> ObjectLockMode {
    match mode {
        LockMode::Compliance => ObjectLockMode::Compliance,
        LockMode::Governance => ObjectLockMode::Governance,
    }
}

fn from_lock_mode(mode: &str) -> Option<LockMode> {
    match mode.to_ascii_uppercase().as_str() {
        "COMPLIANCE" => Some(LockMode::Compliance),
        "GOVERNANCE" => Some(LockMode::Governance),
        _ => None,
    }
}
pub(super) fn retention_of(mode: Option<&str>, until: Option<&AwsDateTime>) -> Option<Retention> {
    Some(Retention {
        mode: from_lock_mode(mode?)?,
        until: chrono_time(until?)?,
    })
}
