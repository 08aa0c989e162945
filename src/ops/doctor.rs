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
use crate::store::s3::{failure, BucketState, Failure, S3Store};
use crate::store::{LockMode, PutOptions, Retention, Store, StoreConfig, StoreError};

/// How long doctor's canaries stay locked; `prune` removes them afterwards.
pub const CANARY_LOCK: Duration = Duration::minutes(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Pass,
    Warn,
    /// Could not tell: the attempt failed with an error that says nothing
    /// about the lock (a 5xx, an expired credential, a malformed request, no
    /// answer), or what it changed could not be read back. Never a pass.
    Unknown,
    Fail,
}

/// The answer doctor gives: proven immutable, proven not, or not proven
/// either way. `Warn` lines alone still pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Pass,
    Unknown,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// The error the storage service answered this check's request with
    /// (`HTTP 403 AccessDenied: Access Denied.`): the refusal a pass rests
    /// on, or what made it a fail or unknown.
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DoctorReport {
    pub plan: String,
    pub repository: String,
    pub lock: LockSetting,
    /// `fail` if any check failed, else `unknown` if any could not tell, else `pass`.
    pub verdict: Verdict,
    pub checks: Vec<Check>,
    /// Least-privilege IAM policies (S3 only): the backup writer's, and prune's.
    pub writer_policy: Option<serde_json::Value>,
    pub prune_policy: Option<serde_json::Value>,
}

impl DoctorReport {
    pub fn ok(&self) -> bool {
        self.verdict == Verdict::Pass
    }

    fn push(&mut self, name: &'static str, status: Status, detail: impl Into<String>) {
        self.push_seen(name, status, detail, None);
    }

    fn push_seen(
        &mut self,
        name: &'static str,
        status: Status,
        detail: impl Into<String>,
        error: Option<String>,
    ) {
        self.checks.push(Check {
            name,
            status,
            detail: detail.into(),
            error,
        });
    }

    fn decide(&mut self) {
        let has = |s: Status| self.checks.iter().any(|c| c.status == s);
        self.verdict = if has(Status::Fail) {
            Verdict::Fail
        } else if has(Status::Unknown) {
            Verdict::Unknown
        } else {
            Verdict::Pass
        };
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
    /// The plan's key could not be read (or its key file created).
    #[error("{0:#}")]
    Key(anyhow::Error),
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
    report.repository_created = if Repository::exists(store.as_ref()).await? {
        false
    } else {
        let key = super::repo_key(plan, true)
            .await
            .map_err(|e| InitError::Key(e.error))?;
        Repository::open_or_init(store, &key, plan.lock_for(Tier::Monthly, now), now).await?;
        true
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
    let mut report = run_checks(plan).await?;
    report.decide();
    Ok(report)
}

async fn run_checks(plan: &Plan) -> Result<DoctorReport, StoreError> {
    let s3 = s3_store(plan).await?;
    let mut report = DoctorReport {
        plan: plan.name.to_string(),
        repository: plan.repository.url(),
        lock: plan.lock.mode,
        verdict: Verdict::Unknown,
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
                report.push_seen(
                    "bucket",
                    Status::Fail,
                    format!("unable to read the state of bucket {}", s3.bucket()),
                    Some(e.to_string()),
                );
                return Ok(report);
            }
        }
    }

    // Lease locks hold only if the server honours their conditional writes.
    if let Some(s3) = &s3 {
        match s3.probe_lock_conditions().await {
            Ok(crate::store::s3::ConditionProbe::Honoured) => report.push(
                "lock conditional writes",
                Status::Pass,
                "If-None-Match and If-Match on PutObject are honoured: two processes cannot both take a lock",
            ),
            Ok(crate::store::s3::ConditionProbe::Ignored(what)) => report.push(
                "lock conditional writes",
                Status::Fail,
                format!("the storage service ignores {what}: two backups or a prune and a backup could both take a lock and run at once; use a server that honours conditional writes"),
            ),
            Err(e) => report.push_seen(
                "lock conditional writes",
                Status::Unknown,
                "unable to try conditional writes under locks/",
                Some(e.to_string()),
            ),
        }
    }

    let opened = match super::repo_key(plan, false).await {
        Ok(key) => Repository::open(store.clone(), &key)
            .await
            .map_err(|e| e.to_string()),
        Err(e) => Err(format!("{e:#}")),
    };
    match opened {
        Ok(repo) if repo.crypto().is_encrypted() => report.push(
            "repository",
            Status::Pass,
            "config readable, format understood, the plan's key opens it (encrypted and authenticated)",
        ),
        Ok(_) => {
            report.push(
                "repository",
                Status::Pass,
                "config readable, format understood",
            );
            report.push(
                "encryption",
                Status::Warn,
                "the repository is NOT encrypted (encryption: none): anyone with write access to the bucket can forge snapshots that restore as real, and anyone with read access reads the data",
            );
        }
        Err(e) => report.push("repository", Status::Fail, e),
    }

    let Some(mode) = plan.lock.mode.store_mode() else {
        report.push(
            "immutability",
            Status::Fail,
            "lock.mode is none: nothing is locked, so no backup survives someone with these credentials",
        );
        return Ok(report);
    };
    report.push(
        "lock mode",
        match mode {
            LockMode::Compliance => Status::Pass,
            LockMode::Governance => Status::Warn,
        },
        match mode {
            LockMode::Compliance => "compliance: no one, not even the bucket's owner, can shorten a lock or delete a locked version".to_string(),
            LockMode::Governance => "GOVERNANCE: anyone granted s3:BypassGovernanceRetention (an administrator, or a role given it later) can delete locked backups or shorten their locks; use `lock: {mode: compliance}` for backups that must survive a compromised account".to_string(),
        },
    );

    // The canary: locked as the plan locks, then attacked.
    let until = Utc::now() + CANARY_LOCK;
    let key = canary_key("canary");
    if let Err(e) = put_canary(store.as_ref(), &key, Some(Retention { mode, until })).await {
        report.push_seen(
            "canary write",
            Status::Fail,
            format!("unable to write {key} under lock"),
            Some(e.to_string()),
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
        None => local_attacks(&mut report, store.as_ref(), &key, mode).await,
    }
    if s3.is_none() {
        report.push(
                "local repository",
                Status::Warn,
                "a local repository's locks are enforced by holdfast, not by the operating system: root on this machine can still delete it. Keep a copy on S3 with Object Lock",
            );
    }
    Ok(report)
}

/// How one attempt to destroy the canary ended.
enum Attempt {
    /// Refused with the lock's own refusal, and a read-back shows the lock
    /// unchanged: what a pass rests on.
    Refused { error: String },
    /// The change went through, or a read-back shows it did.
    Done { what: String, error: Option<String> },
    /// Neither: an error that says nothing about the lock, or a read-back
    /// that failed.
    Unclear { why: String, error: String },
}

/// Turns the attempts of one check into its line.
fn judge(
    report: &mut DoctorReport,
    name: &'static str,
    attempts: Vec<Attempt>,
    pass: String,
    none: String,
) {
    let mut done = Vec::new();
    let mut unclear = Vec::new();
    let mut errors = Vec::new();
    for a in attempts {
        match a {
            Attempt::Refused { error } => errors.push(error),
            Attempt::Done { what, error } => {
                done.push(what);
                errors.extend(error);
            }
            Attempt::Unclear { why, error } => {
                unclear.push(why);
                errors.push(error);
            }
        }
    }
    let error = (!errors.is_empty()).then(|| errors.join("; "));
    if !done.is_empty() {
        report.push_seen(name, Status::Fail, done.join("; "), error);
    } else if !unclear.is_empty() {
        report.push_seen(
            name,
            Status::Unknown,
            format!(
                "could not tell: {}; that is not the Object Lock refusal (HTTP 403 AccessDenied), so it proves nothing about the lock. Fix what the error names and run doctor again",
                unclear.join("; ")
            ),
            error,
        );
    } else if error.is_none() {
        report.push_seen(name, Status::Unknown, none, None);
    } else {
        report.push_seen(name, Status::Pass, pass, error);
    }
}

/// On a local store the store itself enforces the lock: its refusals are
/// typed, so only `Retained` and `RetentionShortening` count.
async fn local_attacks(report: &mut DoctorReport, store: &dyn Store, key: &str, mode: LockMode) {
    let before = store.head(key).await.map(|i| i.retention);
    let readback = |after: Result<crate::store::ObjectInfo, StoreError>| match (&before, after) {
        (Ok(b), Ok(a)) if a.retention == *b && b.is_some() => None,
        (Ok(b), Ok(a)) => Some(Ok(format!(
            "the lock of {key} is now {:?}, was {b:?}",
            a.retention
        ))),
        (_, Err(e)) if e.is_not_found() => Some(Ok(format!("{key} is GONE"))),
        (_, Err(e)) => Some(Err(e.to_string())),
        (Err(e), _) => Some(Err(e.to_string())),
    };
    let attempt = match store.delete(key).await {
        Ok(()) => Attempt::Done {
            what: format!("the canary {key} was DELETED: objects are not immutable"),
            error: None,
        },
        Err(e @ StoreError::Retained { .. }) => judged_by_readback(
            e.to_string(),
            readback(store.head(key).await),
            format!("{key} could not be read back after the delete"),
        ),
        Err(e) => Attempt::Unclear {
            why: format!("deleting {key} failed with an error that is not the lock's refusal"),
            error: e.to_string(),
        },
    };
    judge(
        report,
        "canary delete refused",
        vec![attempt],
        format!("deleting {key} was refused by its lock, which reads back unchanged"),
        String::new(),
    );
    let shorter = Retention {
        mode,
        until: Utc::now(),
    };
    let attempt = match store.extend_retention(key, &shorter).await {
        Ok(()) => Attempt::Done {
            what: format!("the lock of {key} was SHORTENED"),
            error: None,
        },
        Err(e @ StoreError::RetentionShortening { .. }) => judged_by_readback(
            e.to_string(),
            readback(store.head(key).await),
            format!("the lock of {key} could not be read back"),
        ),
        Err(e) => Attempt::Unclear {
            why: format!(
                "shortening the lock of {key} failed with an error that is not the lock's refusal"
            ),
            error: e.to_string(),
        },
    };
    judge(
        report,
        "canary lock cannot be shortened",
        vec![attempt],
        format!("shortening the lock of {key} was refused, and it reads back unchanged"),
        String::new(),
    );
}

/// Reads back the lock of one version after an attempt S3 answered with the
/// lock's refusal: only an unchanged lock makes the refusal a pass.
async fn after_refusal(
    s3: &S3Store,
    key: &str,
    version: &str,
    before: Option<Retention>,
    refusal: Failure,
    what: &str,
) -> Attempt {
    match s3.version_retention(key, version).await {
        Ok(after) if after == before => Attempt::Refused {
            error: refusal.to_string(),
        },
        Ok(after) => Attempt::Done {
            what: format!(
                "{what} of version {version} of {key} was answered {refusal}, yet its lock now reads {}, was {}",
                show_lock(after),
                show_lock(before)
            ),
            error: Some(refusal.to_string()),
        },
        Err(e) if e.is_not_found() => Attempt::Done {
            what: format!(
                "version {version} of {key} is GONE, although {what} was answered {refusal}"
            ),
            error: Some(refusal.to_string()),
        },
        Err(e) => Attempt::Unclear {
            why: format!("the lock of version {version} of {key} could not be read back after {what}"),
            error: format!("{refusal}; read-back: {e}"),
        },
    }
}

fn show_lock(r: Option<Retention>) -> String {
    match r {
        Some(r) => format!("{} until {}", r.mode, r.until),
        None => "no lock".into(),
    }
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
    let mut attempts = Vec::new();
    let mut data_versions = Vec::new();
    match s3.versions(key).await {
        Ok(versions) => data_versions.extend(
            versions
                .into_iter()
                .filter(|(_, marker)| !marker)
                .map(|(v, _)| v),
        ),
        Err(e) => attempts.push(Attempt::Unclear {
            why: format!("the versions of {key} could not be listed"),
            error: e.to_string(),
        }),
    }
    for v in &data_versions {
        let before = match s3.version_retention(key, v).await {
            Ok(r) => r,
            Err(e) => {
                attempts.push(Attempt::Unclear {
                    why: format!("the lock of version {v} of {key} could not be read"),
                    error: e.to_string(),
                });
                continue;
            }
        };
        let res = client
            .delete_object()
            .bucket(bucket)
            .key(&full)
            .version_id(v)
            .send()
            .await;
        attempts.push(match res {
            Ok(_) => Attempt::Done {
                what: format!(
                    "deleting version {v} of {key} SUCCEEDED: these credentials can destroy backups"
                ),
                error: None,
            },
            Err(e) => {
                let f = failure(&e);
                if f.is_lock_refusal() {
                    after_refusal(s3, key, v, before, f, "the delete").await
                } else {
                    Attempt::Unclear {
                        why: format!("deleting version {v} of {key} failed"),
                        error: f.to_string(),
                    }
                }
            }
        });
    }
    judge(
        report,
        "canary delete refused",
        attempts,
        format!(
            "deleting the version of {key} was refused by its lock, which reads back unchanged"
        ),
        format!("no version of {key} is listed, so the delete could not be tried"),
    );

    // 2. Shorten its lock.
    let shorter = until - Duration::seconds(60);
    let mut attempts = Vec::new();
    for v in data_versions.iter().take(1) {
        let before = match s3.version_retention(key, v).await {
            Ok(r) => r,
            Err(e) => {
                attempts.push(Attempt::Unclear {
                    why: format!("the lock of version {v} of {key} could not be read"),
                    error: e.to_string(),
                });
                continue;
            }
        };
        let res = client
            .put_object_retention()
            .bucket(bucket)
            .key(&full)
            .version_id(v)
            .retention(
                aws_sdk_s3::types::ObjectLockRetention::builder()
                    .mode(match mode {
                        LockMode::Compliance => {
                            aws_sdk_s3::types::ObjectLockRetentionMode::Compliance
                        }
                        LockMode::Governance => {
                            aws_sdk_s3::types::ObjectLockRetentionMode::Governance
                        }
                    })
                    .retain_until_date(aws_sdk_s3::primitives::DateTime::from_secs(
                        shorter.timestamp(),
                    ))
                    .build(),
            )
            .send()
            .await;
        attempts.push(match res {
            Ok(_) => Attempt::Done {
                what: format!(
                    "the lock of {key} was SHORTENED (it now reads {}): it does not protect anything",
                    match s3.version_retention(key, v).await {
                        Ok(r) => show_lock(r),
                        Err(e) => format!("unreadable: {e}"),
                    }
                ),
                error: None,
            },
            Err(e) => {
                let f = failure(&e);
                if f.is_lock_refusal() {
                    after_refusal(s3, key, v, before, f, "shortening the lock").await
                } else {
                    Attempt::Unclear {
                        why: format!("shortening the lock of version {v} of {key} failed"),
                        error: f.to_string(),
                    }
                }
            }
        });
    }
    judge(
        report,
        "canary lock cannot be shortened",
        attempts,
        format!("shortening the lock of {key} was refused, and it reads back unchanged"),
        format!("no version of {key} is listed, so shortening its lock could not be tried"),
    );

    // 3. Dangerous permissions the credentials hold, probed harmlessly.
    let gkey = canary_key("governance-canary");
    let bypass: Result<bool, String> = match put_canary(
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
            let mut seen: Result<bool, String> = Ok(false);
            match s3.versions(&gkey).await {
                Err(e) => seen = Err(e.to_string()),
                Ok(versions) => {
                    for (v, _) in versions {
                        let res = client
                            .delete_object()
                            .bucket(bucket)
                            .key(&gfull)
                            .version_id(&v)
                            .bypass_governance_retention(true)
                            .send()
                            .await;
                        match res {
                            Ok(_) => seen = Ok(true),
                            Err(e) => {
                                let f = failure(&e);
                                if !f.is_lock_refusal() && seen == Ok(false) {
                                    seen = Err(f.to_string());
                                }
                            }
                        }
                    }
                }
            }
            seen
        }
    };
    report.push_seen(
        "s3:BypassGovernanceRetention",
        match (&bypass, mode) {
            (Ok(false), _) => Status::Pass,
            (Ok(true), LockMode::Governance) => Status::Fail,
            (Ok(true), LockMode::Compliance) => Status::Warn,
            (Err(_), LockMode::Governance) => Status::Unknown,
            (Err(_), LockMode::Compliance) => Status::Warn,
        },
        match &bypass {
            Ok(false) => "not held: a GOVERNANCE lock cannot be bypassed with these credentials".to_string(),
            Ok(true) => format!(
                "HELD: these credentials deleted a GOVERNANCE-locked canary{}",
                if mode == LockMode::Governance { "; the plan's governance locks do not protect against them. Use compliance mode or drop the permission" } else { " (the plan uses compliance mode, which no permission bypasses)" }
            ),
            Err(_) => "could not tell: the probe failed with an error that is not the lock's refusal".to_string(),
        },
        bypass.err(),
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
    permission_probe(
        report,
        "s3:PutBucketObjectLockConfiguration",
        conf_probe,
        "HELD: these credentials can change the bucket's default retention (existing locks still hold); the backup writer does not need it",
        "not probed: the bucket has no lock configuration to write back",
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
        .await
        .map(|_| true)
        .map_err(|e| failure(&e));
    permission_probe(
        report,
        "s3:PutBucketVersioning",
        versioning_probe,
        "HELD: these credentials can change bucket versioning; the backup writer does not need it",
        "",
    );
}

/// A permission the writer should not hold, probed by writing back what is
/// there: held is a warning, 403 AccessDenied is "not held", and any other
/// error cannot tell either way.
fn permission_probe(
    report: &mut DoctorReport,
    name: &'static str,
    probe: Result<bool, Failure>,
    held: &str,
    not_probed: &str,
) {
    let (status, detail, error) = match probe {
        Ok(true) => (Status::Warn, held.to_string(), None),
        Ok(false) => (Status::Pass, not_probed.to_string(), None),
        Err(f) if f.status == Some(403) && f.code == "AccessDenied" => {
            (Status::Pass, "not held".to_string(), Some(f.to_string()))
        }
        Err(f) => (
            Status::Warn,
            "could not tell whether it is held: the probe failed with an error other than AccessDenied".to_string(),
            Some(f.to_string()),
        ),
    };
    report.push_seen(name, status, detail, error);
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
            InitError::Key(_) => Exit::Plan,
            _ => Exit::Repository,
        }
    }
}

/// A refusal by the lock counts only once the read-back (`None`: unchanged;
/// `Some(Ok)`: what changed; `Some(Err)`: unreadable) shows the canary as it was.
fn judged_by_readback(
    error: String,
    back: Option<Result<String, String>>,
    unreadable: String,
) -> Attempt {
    match back {
        None => Attempt::Refused { error },
        Some(Ok(what)) => Attempt::Done {
            what,
            error: Some(error),
        },
        Some(Err(r)) => Attempt::Unclear {
            why: unreadable,
            error: r,
        },
    }
}
