//! `holdfast repo init` and `holdfast doctor`: set a repository up so that it
//! is immutable, and prove from the outside, with the plan's own credentials,
//! that it is.
//!
//! The proof is a canary: a tiny object written under the plan's lock, which
//! doctor then tries to destroy the way an insider would (delete its version,
//! shorten its lock). Both must be refused by the storage service itself.

use std::sync::Arc;

use bytes::Bytes;
use chrono::{DateTime, Duration, Utc};
use serde::Serialize;

use crate::error::HasExit;
use crate::ids::Hash256;
use crate::plan::{LockSetting, Plan, Tier};
use crate::repository::Repository;
use crate::store::s3::{failure, BucketState, S3Store};
use crate::store::{LockMode, PutOptions, Retention, Store, StoreConfig, StoreError};

/// How long doctor's canaries stay locked; `prune` removes them afterwards.
pub const CANARY_LOCK: Duration = Duration::minutes(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub plan: String,
    pub repository: String,
    pub lock: LockSetting,
    pub checks: Vec<Check>,
    /// Least-privilege IAM policies (S3 only): the backup writer's, and prune's.
    pub writer_policy: Option<serde_json::Value>,
    pub prune_policy: Option<serde_json::Value>,
}

impl DoctorReport {
    pub fn ok(&self) -> bool {
        self.checks.iter().all(|c| c.status != Status::Fail)
    }

    fn push(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
        });
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct InitReport {
    pub plan: String,
    pub repository: String,
    pub bucket_created: bool,
    pub bucket: Option<BucketState>,
    pub repository_created: bool,
    pub lock: LockSetting,
}

#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("bucket {bucket} has no Object Lock, so nothing in it can be made immutable; plan {plan} asks for lock.mode {mode}. Have an administrator enable Object Lock on it (versioning on, then PutObjectLockConfiguration), or name a new bucket in the plan and run `holdfast repo init`, which creates it locked; or, knowing that anyone with the credentials could then delete every backup, set `lock: {{mode: none}}` in the plan")]
    NoObjectLock {
        bucket: String,
        plan: String,
        mode: LockSetting,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Repo(#[from] crate::repository::RepoError),
}

/// The S3 client for a plan's repository, when it is on S3.
pub async fn s3_store(plan: &Plan) -> Result<Option<S3Store>, StoreError> {
    match &plan.repository {
        StoreConfig::S3(c) => Ok(Some(S3Store::open(c.clone()).await?)),
        StoreConfig::Local { .. } => Ok(None),
    }
}

/// Creates (or checks) the bucket and the repository in it.
pub async fn repo_init(plan: &Plan) -> Result<InitReport, InitError> {
    let now = Utc::now();
    let mut report = InitReport {
        plan: plan.name.to_string(),
        repository: plan.repository.url(),
        bucket_created: false,
        bucket: None,
        repository_created: false,
        lock: plan.lock.mode,
    };
    let store: Arc<dyn Store> = match s3_store(plan).await? {
        Some(s3) => {
            let mut state = s3.bucket_state().await?;
            let want_lock = plan.lock.mode != LockSetting::None;
            if !state.exists {
                s3.create_bucket(want_lock).await?;
                report.bucket_created = true;
                state = s3.bucket_state().await?;
            }
            if want_lock && !state.object_lock {
                return Err(InitError::NoObjectLock {
                    bucket: s3.bucket().to_string(),
                    plan: plan.name.to_string(),
                    mode: plan.lock.mode,
                });
            }
            if state.versioning.as_deref() != Some("Enabled") {
                s3.enable_versioning().await?;
                state = s3.bucket_state().await?;
            }
            report.bucket = Some(state);
            Arc::new(s3)
        }
        None => crate::store::open(&plan.repository).await?.into(),
    };
    report.repository_created = match Repository::open(store.clone()).await {
        Ok(_) => false,
        Err(crate::repository::RepoError::NotARepository { .. }) => {
            Repository::open_or_init(store, plan.lock_for(Tier::Monthly, now), now).await?;
            true
        }
        Err(e) => return Err(e.into()),
    };
    Ok(report)
}

fn canary_key(what: &str) -> String {
    let mut r = [0u8; 6];
    let _ = getrandom::fill(&mut r);
    format!(
        "doctor/{what}-{}-{}",
        Utc::now().format("%Y%m%dT%H%M%SZ"),
        hex::encode(r)
    )
}

async fn put_canary(
    store: &dyn Store,
    key: &str,
    retention: Option<Retention>,
) -> Result<(), StoreError> {
    let body = Bytes::from(format!(
        "holdfast doctor canary, written {}; it must not be deletable before its lock ends\n",
        Utc::now().to_rfc3339()
    ));
    store
        .put(
            key,
            body.clone(),
            &PutOptions {
                sha256: Hash256::digest(&body),
                retention,
            },
        )
        .await
}

/// Runs every check against the plan's repository.
pub async fn doctor(plan: &Plan) -> Result<DoctorReport, StoreError> {
    let s3 = s3_store(plan).await?;
    let mut report = DoctorReport {
        plan: plan.name.to_string(),
        repository: plan.repository.url(),
        lock: plan.lock.mode,
        checks: Vec::new(),
        writer_policy: s3.as_ref().map(writer_policy),
        prune_policy: s3.as_ref().map(prune_policy),
    };
    let store: Arc<dyn Store> = match &s3 {
        Some(s) => Arc::new(s.clone()),
        None => crate::store::open(&plan.repository).await?.into(),
    };

    if let Some(s3) = &s3 {
        match s3.bucket_state().await {
            Ok(state) if !state.exists => {
                report.push(
                    "bucket",
                    Status::Fail,
                    format!(
                        "bucket {} does not exist; run `holdfast repo init --plan {}`",
                        s3.bucket(),
                        plan.file.display()
                    ),
                );
                return Ok(report);
            }
            Ok(state) => {
                report.push(
                    "bucket versioning",
                    if state.versioning.as_deref() == Some("Enabled") {
                        Status::Pass
                    } else {
                        Status::Fail
                    },
                    format!(
                        "versioning is {}",
                        state.versioning.as_deref().unwrap_or("off")
                    ),
                );
                let lock_status = match (state.object_lock, plan.lock.mode) {
                    (true, _) => Status::Pass,
                    (false, LockSetting::None) => Status::Warn,
                    (false, _) => Status::Fail,
                };
                report.push(
                    "bucket object lock",
                    lock_status,
                    if state.object_lock {
                        format!(
                            "Object Lock enabled{}",
                            state
                                .default_retention
                                .as_ref()
                                .map(|d| format!(", default retention {d}"))
                                .unwrap_or_default()
                        )
                    } else {
                        "Object Lock is NOT enabled on this bucket: every object in it can be deleted by anyone holding these credentials".into()
                    },
                );
            }
            Err(e) => {
                report.push("bucket", Status::Fail, e.to_string());
                return Ok(report);
            }
        }
    }

    match Repository::open(store.clone()).await {
        Ok(_) => report.push(
            "repository",
            Status::Pass,
            "config readable, format understood",
        ),
        Err(e) => report.push("repository", Status::Fail, e.to_string()),
    }

    let Some(mode) = plan.lock.mode.store_mode() else {
        report.push(
            "immutability",
            Status::Fail,
            "lock.mode is none: nothing is locked, so no backup survives someone with these credentials",
        );
        return Ok(report);
    };

    // The canary: locked as the plan locks, then attacked.
    let until = Utc::now() + CANARY_LOCK;
    let key = canary_key("canary");
    if let Err(e) = put_canary(store.as_ref(), &key, Some(Retention { mode, until })).await {
        report.push(
            "canary write",
            Status::Fail,
            format!("unable to write {key} under lock: {e}"),
        );
        return Ok(report);
    }
    report.push(
        "canary write",
        Status::Pass,
        format!(
            "wrote {key} locked ({mode}) until {}",
            until.format("%H:%M:%SZ")
        ),
    );

    match &s3 {
        Some(s3) => s3_attacks(&mut report, s3, &key, mode, until).await,
        None => {
            let deleted = store.delete(&key).await;
            report.push(
                "canary delete refused",
                if matches!(deleted, Err(StoreError::Retained { .. })) {
                    Status::Pass
                } else {
                    Status::Fail
                },
                match deleted {
                    Err(e) => format!("refused: {e}"),
                    Ok(()) => "the canary was DELETED: objects are not immutable".into(),
                },
            );
            report.push(
                "local repository",
                Status::Warn,
                "a local repository's locks are enforced by holdfast, not by the operating system: root on this machine can still delete it. Keep a copy on S3 with Object Lock",
            );
        }
    }
    Ok(report)
}

async fn s3_attacks(
    report: &mut DoctorReport,
    s3: &S3Store,
    key: &str,
    mode: LockMode,
    until: DateTime<Utc>,
) {
    let client = s3.client();
    let bucket = s3.bucket();
    let full = s3.full_key(key);

    // 1. Delete every version of the canary, as an insider would.
    let versions = s3.versions(key).await.unwrap_or_default();
    let mut deleted = Vec::new();
    let mut refusals = Vec::new();
    for (v, _) in &versions {
        match client
            .delete_object()
            .bucket(bucket)
            .key(&full)
            .version_id(v)
            .send()
            .await
        {
            Ok(_) => deleted.push(v.clone()),
            Err(e) => refusals.push(failure(&e).to_string()),
        }
    }
    report.push(
        "canary delete refused",
        if deleted.is_empty() && !versions.is_empty() {
            Status::Pass
        } else {
            Status::Fail
        },
        if !deleted.is_empty() {
            format!(
                "deleting version(s) {} of {key} SUCCEEDED: these credentials can destroy backups",
                deleted.join(", ")
            )
        } else if versions.is_empty() {
            format!("no version of {key} is listed, so the delete could not be tried")
        } else {
            format!(
                "deleting the version of {key} was refused ({})",
                refusals.join("; ")
            )
        },
    );

    // 2. Shorten its lock.
    let shorter = until - Duration::seconds(60);
    let res = client
        .put_object_retention()
        .bucket(bucket)
        .key(&full)
        .retention(
            aws_sdk_s3::types::ObjectLockRetention::builder()
                .mode(match mode {
                    LockMode::Compliance => aws_sdk_s3::types::ObjectLockRetentionMode::Compliance,
                    LockMode::Governance => aws_sdk_s3::types::ObjectLockRetentionMode::Governance,
                })
                .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(
                    shorter.timestamp(),
                ))
                .build(),
        )
        .send()
        .await;
    report.push(
        "canary lock cannot be shortened",
        if res.is_err() {
            Status::Pass
        } else {
            Status::Fail
        },
        match res {
            Err(e) => format!("shortening the lock of {key} was refused ({})", failure(&e)),
            Ok(_) => format!(
                "the lock of {key} was SHORTENED to {shorter}: it does not protect anything"
            ),
        },
    );

    // 3. Dangerous permissions the credentials hold, probed harmlessly.
    let gkey = canary_key("governance-canary");
    let bypass = match put_canary(
        s3,
        &gkey,
        Some(Retention {
            mode: LockMode::Governance,
            until: Utc::now() + CANARY_LOCK,
        }),
    )
    .await
    {
        Err(e) => Err(e.to_string()),
        Ok(()) => {
            let gfull = s3.full_key(&gkey);
            let mut bypassed = false;
            for (v, _) in s3.versions(&gkey).await.unwrap_or_default() {
                bypassed |= client
                    .delete_object()
                    .bucket(bucket)
                    .key(&gfull)
                    .version_id(&v)
                    .bypass_governance_retention(true)
                    .send()
                    .await
                    .is_ok();
            }
            Ok(bypassed)
        }
    };
    report.push(
        "s3:BypassGovernanceRetention",
        match (&bypass, mode) {
            (Ok(false), _) => Status::Pass,
            (Ok(true), LockMode::Governance) => Status::Fail,
            (Ok(true), LockMode::Compliance) => Status::Warn,
            (Err(_), _) => Status::Warn,
        },
        match bypass {
            Ok(false) => "not held: a GOVERNANCE lock cannot be bypassed with these credentials".to_string(),
            Ok(true) => format!(
                "HELD: these credentials deleted a GOVERNANCE-locked canary{}",
                if mode == LockMode::Governance { "; the plan's governance locks do not protect against them. Use compliance mode or drop the permission" } else { " (the plan uses compliance mode, which no permission bypasses)" }
            ),
            Err(e) => format!("could not tell: {e}"),
        },
    );

    let lock_conf = client
        .get_object_lock_configuration()
        .bucket(bucket)
        .send()
        .await;
    let conf_probe = match lock_conf
        .ok()
        .and_then(|o| o.object_lock_configuration().cloned())
    {
        Some(conf) => client
            .put_object_lock_configuration()
            .bucket(bucket)
            .object_lock_configuration(conf)
            .send()
            .await
            .map(|_| true)
            .map_err(|e| failure(&e)),
        None => Ok(false),
    };
    report.push(
        "s3:PutBucketObjectLockConfiguration",
        if matches!(conf_probe, Ok(true)) { Status::Warn } else { Status::Pass },
        match conf_probe {
            Ok(true) => "HELD: these credentials can change the bucket's default retention (existing locks still hold); the backup writer does not need it".to_string(),
            Ok(false) => "not probed: the bucket has no lock configuration to write back".to_string(),
            Err(f) => format!("not held ({f})"),
        },
    );

    let versioning_probe = client
        .put_bucket_versioning()
        .bucket(bucket)
        .versioning_configuration(
            aws_sdk_s3::types::VersioningConfiguration::builder()
                .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                .build(),
        )
        .send()
        .await;
    report.push(
        "s3:PutBucketVersioning",
        if versioning_probe.is_ok() { Status::Warn } else { Status::Pass },
        match versioning_probe {
            Ok(_) => "HELD: these credentials can change bucket versioning; the backup writer does not need it".to_string(),
            Err(e) => format!("not held ({})", failure(&e)),
        },
    );
}

/// The bucket's ARN and its objects' ARN pattern.
fn arns(s3: &S3Store) -> (String, String) {
    let bucket = format!("arn:aws:s3:::{}", s3.bucket());
    let prefix = s3.config().prefix.clone();
    let objects = if prefix.is_empty() {
        format!("{bucket}/*")
    } else {
        format!("{bucket}/{prefix}/*")
    };
    (bucket, objects)
}

fn deny_admin(bucket: &str) -> serde_json::Value {
    serde_json::json!({
        "Sid": "NeverChangeTheLockOrTheBucket",
        "Effect": "Deny",
        "Action": [
            "s3:BypassGovernanceRetention",
            "s3:PutBucketObjectLockConfiguration",
            "s3:PutBucketVersioning",
            "s3:PutBucketPolicy",
            "s3:DeleteBucketPolicy",
            "s3:PutLifecycleConfiguration",
            "s3:DeleteBucket"
        ],
        "Resource": [bucket, format!("{bucket}/*")]
    })
}

/// The backup writer: put and read, extend locks; delete only its own lock objects.
pub fn writer_policy(s3: &S3Store) -> serde_json::Value {
    // The list statement has no prefix condition: HeadBucket (which `doctor`
    // and `repo init` use) checks s3:ListBucket without one.
    let (bucket, objects) = arns(s3);
    let locks = objects.trim_end_matches('*').to_string() + "locks/*";
    serde_json::json!({
        "Version": "2012-10-17",
        "Statement": [
            {
                "Sid": "ReadAndWriteOnce",
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:GetObject", "s3:GetObjectVersion", "s3:GetObjectRetention", "s3:PutObjectRetention"],
                "Resource": objects
            },
            {
                "Sid": "List",
                "Effect": "Allow",
                "Action": ["s3:ListBucket", "s3:ListBucketVersions"],
                "Resource": bucket
            },
            {
                "Sid": "CheckTheBucket",
                "Effect": "Allow",
                "Action": ["s3:GetBucketObjectLockConfiguration", "s3:GetBucketVersioning"],
                "Resource": bucket
            },
            {
                "Sid": "ReleaseRepositoryLocks",
                "Effect": "Allow",
                "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
                "Resource": locks
            },
            deny_admin(&bucket)
        ]
    })
}

/// Prune: the writer's rights plus deleting object versions (the lock still
/// refuses any version before its retain-until).
pub fn prune_policy(s3: &S3Store) -> serde_json::Value {
    let (_, objects) = arns(s3);
    let mut policy = writer_policy(s3);
    let statements = policy["Statement"].as_array_mut().expect("statements");
    statements.insert(
        3,
        serde_json::json!({
            "Sid": "DeleteExpired",
            "Effect": "Allow",
            "Action": ["s3:DeleteObject", "s3:DeleteObjectVersion"],
            "Resource": objects
        }),
    );
    policy
}

impl HasExit for InitError {
    fn exit(&self) -> crate::error::Exit {
        use crate::error::Exit;
        match self {
            InitError::Repo(r) => r.exit(),
            _ => Exit::Repository,
        }
    }
}
