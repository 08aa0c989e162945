//! Named lease locks: objects under `locks/`, the one thing holdfast
//! overwrites. An exclusive holder's object is `locks/<name>`; each shared
//! holder creates its own `locks/<name>.shared.<host>-<pid>-<nonce>`. Each
//! side writes its own object first and then looks for the other kind's
//! live objects, backing off if it finds one: with S3's read-after-write
//! listing, of two that race at least one sees the other.
//!
//! Every write is conditional, so two contenders can never both win: a lock
//! is created with `If-None-Match: *`, and refreshed or taken over with
//! `If-Match: <ETag>` of the version last read or written. Whoever loses
//! gets 412: a contender reads the lock again and reports who holds it; a
//! holder whose refresh loses knows its lock was taken and stops before its
//! next commit point (see [`LockGuard::check`]). Every record written is
//! unique (a holder token and a counter), so ETags never repeat.
//!
//! Staleness is judged by the server's clock alone: a lock is stale when the
//! `Date` of the response that read it is more than the holder's lease (plus
//! [`CLOCK_ALLOWANCE`]) after the object's `Last-Modified`. The times in the
//! record are the holder's clock and only shown in messages. A holder
//! counts its lease from when it *sent* its last successful write (which
//! the server stamped later), on a monotonic clock, and gives it up a
//! [`margin`] before the lease ends; so it stops before anyone else may
//! judge its lock stale.
//!
//! Release, and the drop of an unreleased guard, delete exactly the
//! versions this holder wrote, by version id: never another holder's, even
//! after a takeover.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_s3::config::interceptors::BeforeDeserializationInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::primitives::ByteStream;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};

use super::error::failure;
use super::transfer::b64;
use super::S3Store;
use crate::store::{check_key, LockGuard, LockKind, StoreError};

/// How long a lock object holds without being refreshed, unless
/// [`LEASE_VAR`] says otherwise.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(15 * 60);
/// Hidden setting for tests: the lease in whole seconds (at least 1).
pub const LEASE_VAR: &str = "HOLDFAST_LOCK_LEASE_SECS";
/// A record claiming a longer lease is judged by this one, so a planted or
/// corrupt record cannot block a plan for longer.
const MAX_LEASE: Duration = Duration::from_secs(60 * 60);
/// `Last-Modified` and `Date` are whole seconds, and may come from
/// different nodes of the storage service: a lock is stale only this long
/// after its lease ran out by the server's clock.
pub const CLOCK_ALLOWANCE: Duration = Duration::from_secs(2);
/// Lock objects are a few hundred bytes; a bigger one is not read.
const RECORD_CAP: usize = 64 * 1024;

/// The part of a lease a holder does not use: it counts its lock as lost
/// this long before the lease ends, so a commit point that passed its check
/// finishes before anyone else may take the lock over.
pub fn margin(lease: Duration) -> Duration {
    lease / 5
}

/// The lease from [`LEASE_VAR`], or [`DEFAULT_LEASE`].
pub(super) fn lease_from_env() -> Duration {
    match std::env::var(LEASE_VAR) {
        Ok(v) => {
            match v.trim().parse::<u64>() {
                Ok(s) if s >= 1 => Duration::from_secs(s).min(MAX_LEASE),
                _ => {
                    tracing::warn!("{LEASE_VAR}={v} is not a whole number of seconds ≥ 1; using the default lease");
                    DEFAULT_LEASE
                }
            }
        }
        Err(_) => DEFAULT_LEASE,
    }
}

/// The lock object's contents. Times are the writer's clock, for people.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct LockRecord {
    host: String,
    pid: u32,
    acquired: DateTime<Utc>,
    expires: DateTime<Utc>,
    /// The lease its holder keeps, in seconds.
    #[serde(default = "default_lease_secs")]
    lease_secs: u64,
    /// Random, per holder: with `refresh`, makes every write's bytes (and
    /// so its ETag) unique.
    #[serde(default)]
    holder: String,
    #[serde(default)]
    refresh: u64,
}

fn default_lease_secs() -> u64 {
    DEFAULT_LEASE.as_secs()
}

impl LockRecord {
    fn new(holder: &str, acquired: DateTime<Utc>, lease: Duration, refresh: u64) -> Self {
        LockRecord {
            host: crate::hostname().unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            acquired,
            expires: Utc::now() + chrono::Duration::from_std(lease).expect("lease fits"),
            lease_secs: lease.as_secs(),
            holder: holder.to_string(),
            refresh,
        }
    }

    fn body(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("lock record serialises"))
    }
}

/// A lock object as read: its latest version and the server's clock.
#[derive(Debug, Clone)]
struct Seen {
    /// `None` when the bytes are not a lock record (then judged by the
    /// default lease).
    record: Option<LockRecord>,
    etag: String,
    version: Option<String>,
    last_modified: DateTime<Utc>,
    /// The response's `Date`; `None` if the server sent none (then the lock
    /// never goes stale by time).
    server_now: Option<DateTime<Utc>>,
}

impl Seen {
    fn lease(&self) -> Duration {
        let secs = self
            .record
            .as_ref()
            .map_or(DEFAULT_LEASE.as_secs(), |r| r.lease_secs);
        Duration::from_secs(secs).min(MAX_LEASE)
    }

    /// When the lease ends by the server's clock.
    fn lease_end(&self) -> DateTime<Utc> {
        self.last_modified + chrono::Duration::from_std(self.lease()).expect("lease fits")
    }

    /// Whether the holder is certainly gone: by the server's clock its lease
    /// ran out, or it was a process on this host that no longer exists.
    fn is_stale(&self) -> bool {
        if let Some(now) = self.server_now {
            let allowance = chrono::Duration::from_std(CLOCK_ALLOWANCE).expect("fits");
            if now > self.lease_end() + allowance {
                return true;
            }
        }
        let Some(r) = &self.record else {
            return false;
        };
        let here = crate::hostname().unwrap_or_default();
        r.host == here && !std::path::Path::new(&format!("/proc/{}", r.pid)).exists()
    }

    fn holder(&self) -> String {
        match &self.record {
            Some(h) => format!(
                "pid {} on {} since {}, lease until {} by the storage server's clock",
                h.pid,
                h.host,
                h.acquired,
                self.lease_end()
            ),
            None => format!(
                "unreadable lock record written {}, lease until {} by the storage server's clock",
                self.last_modified,
                self.lease_end()
            ),
        }
    }
}

/// How a lock write is conditioned.
enum Cond<'a> {
    /// `If-None-Match: *`
    Create,
    /// `If-Match: <etag>`
    Match(&'a str),
}

/// What a conditional write came back with.
enum Put {
    Written {
        etag: String,
        version: Option<String>,
    },
    /// 412 (or 404/409 for `If-Match` on a key that is gone or busy): the
    /// object is not what the condition said.
    Conflict,
}

/// Catches a response's `Date` header (the SDK's outputs do not carry it).
#[derive(Debug, Clone, Default)]
struct DateOf(Arc<Mutex<Option<DateTime<Utc>>>>);

impl Intercept for DateOf {
    fn name(&self) -> &'static str {
        "holdfast-response-date"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _: &RuntimeComponents,
        _: &mut ConfigBag,
    ) -> Result<(), aws_sdk_s3::error::BoxError> {
        let date = context
            .response()
            .headers()
            .get("date")
            .and_then(|d| DateTime::parse_from_rfc2822(d).ok())
            .map(|d| d.with_timezone(&Utc));
        *self.0.lock().expect("date lock") = date;
        Ok(())
    }
}

fn aws_to_chrono(t: &aws_sdk_s3::primitives::DateTime) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.secs(), t.subsec_nanos())
}

impl S3Store {
    /// Takes the lock `name` as `kind`, or says who holds it.
    pub(super) async fn acquire_lock(
        &self,
        name: &str,
        kind: LockKind,
    ) -> Result<Box<dyn LockGuard>, StoreError> {
        let exclusive_key = format!("locks/{name}");
        check_key(&exclusive_key)?;
        let shared_prefix = format!("{exclusive_key}.shared.");
        let token = self.lock_nonce(&exclusive_key, 8)?;
        let key = match kind {
            LockKind::Exclusive => exclusive_key.clone(),
            LockKind::Shared => format!(
                "{shared_prefix}{}-{}-{}",
                crate::hostname()
                    .unwrap_or_else(|| "unknown".into())
                    .replace(|c: char| !c.is_ascii_alphanumeric() && c != '-', "_"),
                std::process::id(),
                &token[..8]
            ),
        };
        let busy = |seen: &Seen, key: &str| StoreError::Busy {
            what: format!("lock `{name}` in {}", self.url),
            holder: seen.holder(),
            location: format!("{}/{key}", self.url),
        };
        let lease = self.lease;
        let acquired = Utc::now();
        // Taking over: the stale version read, which our write must replace.
        let mut stale: Option<Seen> = None;
        let mut last_seen: Option<Seen> = None;
        let mut written = None;
        for attempt in 0..4u64 {
            let record = LockRecord::new(&token, acquired, lease, attempt);
            let cond = match &stale {
                None => Cond::Create,
                Some(s) => Cond::Match(&s.etag),
            };
            let sent = Instant::now();
            match self.put_lock(&key, record.body(), cond).await? {
                Put::Written { etag, version } => {
                    written = Some((etag, version, sent, attempt));
                    break;
                }
                Put::Conflict => match self.read_lock(&key).await? {
                    // Released since: create it again.
                    None => stale = None,
                    Some(seen) if !seen.is_stale() => return Err(busy(&seen, &key)),
                    Some(seen) => {
                        tracing::warn!(object = %key, holder = %seen.holder(), "taking over a stale repository lock");
                        last_seen = Some(seen.clone());
                        stale = Some(seen);
                    }
                },
            }
        }
        let Some((etag, version, sent, refresh)) = written else {
            // Lost every round: others keep changing it, so it is held.
            return Err(match last_seen {
                Some(seen) => busy(&seen, &key),
                None => StoreError::Busy {
                    what: format!("lock `{name}` in {}", self.url),
                    holder: "another process (it changed hands while this one tried)".into(),
                    location: format!("{}/{key}", self.url),
                },
            });
        };
        if let Some(old) = &stale {
            // The stale holder's versions, now under ours: not read again.
            if let Some(v) = &old.version {
                let _ = self.delete_version(&key, v).await;
            }
        }
        let lock = S3Lock::new(
            self.clone(),
            name.to_string(),
            key.clone(),
            token,
            acquired,
            Held {
                etag,
                versions: version.into_iter().collect(),
                refresh,
            },
            sent,
        );
        // Our object is written: now the other kind must not be held.
        let conflict = match kind {
            LockKind::Exclusive => self.live_holder(&shared_prefix, false).await,
            LockKind::Shared => self.live_holder(&exclusive_key, true).await,
        };
        match conflict {
            Ok(None) => Ok(Box::new(lock)),
            Ok(Some((held, seen))) => {
                Box::new(lock).release().await;
                let mut holder = seen.holder();
                if kind == LockKind::Exclusive {
                    holder.push_str(" (shared)");
                }
                Err(StoreError::Busy {
                    what: format!("lock `{name}` in {}", self.url),
                    holder,
                    location: format!("{}/{held}", self.url),
                })
            }
            Err(e) => {
                Box::new(lock).release().await;
                Err(e)
            }
        }
    }

    fn lock_nonce(&self, key: &str, bytes: usize) -> Result<String, StoreError> {
        let mut nonce = vec![0u8; bytes];
        getrandom::fill(&mut nonce).map_err(|e| StoreError::Io {
            op: "make a lock name",
            store: self.url.clone(),
            key: key.to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
        Ok(hex::encode(nonce))
    }

    /// The first live lock object whose key starts with `prefix` (or is
    /// `prefix`, when `exact`), as read; stale ones are removed on the way
    /// (the very version judged stale, by id).
    async fn live_holder(
        &self,
        prefix: &str,
        exact: bool,
    ) -> Result<Option<(String, Seen)>, StoreError> {
        // `list` leaves `locks/` out (lock objects are not repository
        // content): read the versions listing directly.
        let mut keys = std::collections::BTreeSet::new();
        for v in self
            .list_versions(&self.full_key(prefix), "list locks", prefix)
            .await?
        {
            if !v.delete_marker {
                keys.insert(self.store_key(&v.key).to_string());
            }
        }
        for key in keys {
            if exact && key != prefix {
                continue;
            }
            // Released between the listing and the read: `None`.
            let Some(seen) = self.read_lock(&key).await? else {
                continue;
            };
            if !seen.is_stale() {
                return Ok(Some((key, seen)));
            }
            tracing::warn!(object = %key, holder = %seen.holder(), "removing a stale repository lock");
            if let Some(v) = &seen.version {
                let _ = self.delete_version(&key, v).await;
            }
        }
        Ok(None)
    }

    /// The latest version of lock object `key` with its ETag, version,
    /// `Last-Modified` and the server's `Date`; `None` if it is gone.
    async fn read_lock(&self, key: &str) -> Result<Option<Seen>, StoreError> {
        let date = DateOf::default();
        let res = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .customize()
            .interceptor(date.clone())
            .send()
            .await;
        let out = match res {
            Ok(out) => out,
            Err(e) => {
                return match self.error("read lock", key, e) {
                    StoreError::NotFound { .. } => Ok(None),
                    e => Err(e),
                };
            }
        };
        if out.content_length().unwrap_or(0) > RECORD_CAP as i64 {
            return Err(StoreError::TooLarge {
                store: self.url.clone(),
                key: key.to_string(),
                size: out.content_length().unwrap_or(0).max(0) as u64,
                max: RECORD_CAP as u64,
            });
        }
        let etag = out.e_tag().unwrap_or_default().to_string();
        let version = out
            .version_id()
            .filter(|v| *v != "null")
            .map(str::to_string);
        let last_modified = out.last_modified().and_then(aws_to_chrono);
        let mut body = out.body;
        let mut bytes = BytesMut::new();
        loop {
            match body.try_next().await {
                Ok(Some(chunk)) => {
                    if bytes.len() + chunk.len() > RECORD_CAP {
                        return Err(StoreError::TooLarge {
                            store: self.url.clone(),
                            key: key.to_string(),
                            size: (bytes.len() + chunk.len()) as u64,
                            max: RECORD_CAP as u64,
                        });
                    }
                    bytes.extend_from_slice(&chunk);
                }
                Ok(None) => break,
                Err(e) => {
                    return Err(StoreError::Io {
                        op: "read lock",
                        store: self.url.clone(),
                        key: key.to_string(),
                        source: std::io::Error::other(e.to_string()),
                    })
                }
            }
        }
        let server_now = *date.0.lock().expect("date lock");
        if server_now.is_none() {
            tracing::warn!(object = %key, "the storage server sent no Date header: lock staleness cannot be judged by its clock");
        }
        Ok(Some(Seen {
            record: serde_json::from_slice(&bytes).ok(),
            etag,
            version,
            // Without one, as new as the server's now: not stale by time.
            last_modified: last_modified.or(server_now).unwrap_or_else(Utc::now),
            server_now: server_now.filter(|_| last_modified.is_some()),
        }))
    }

    /// Writes lock object `key` under `cond`, without retention.
    async fn put_lock(&self, key: &str, data: Bytes, cond: Cond<'_>) -> Result<Put, StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .content_length(data.len() as i64)
            .checksum_sha256(b64(&Sha256::digest(&data)))
            .body(ByteStream::from(data));
        let matching = matches!(cond, Cond::Match(_));
        req = match cond {
            Cond::Create => req.if_none_match("*"),
            Cond::Match(etag) => req.if_match(etag),
        };
        match req.send().await {
            Ok(out) => Ok(Put::Written {
                etag: out.e_tag().unwrap_or_default().to_string(),
                version: out
                    .version_id()
                    .filter(|v| *v != "null")
                    .map(str::to_string),
            }),
            Err(e) => {
                let f = failure(&e);
                match f.status {
                    // AWS: 409 for a concurrent conditional write, 404 for
                    // If-Match on a key that is gone.
                    Some(412) | Some(409) => Ok(Put::Conflict),
                    Some(404) if matching && f.code != "NoSuchBucket" => Ok(Put::Conflict),
                    _ => Err(self.failure_error("write lock", key, f)),
                }
            }
        }
    }
}

/// What `doctor` found when it tried the conditions lock objects rely on.
#[derive(Debug)]
pub enum ConditionProbe {
    /// `If-None-Match: *` and `If-Match` were both honoured.
    Honoured,
    /// The server ignored a condition (named): two contenders could both
    /// win a lock.
    Ignored(&'static str),
}

impl S3Store {
    /// Tries on a scratch object under `locks/` whether the server honours
    /// the conditions lock objects rely on, and removes it again.
    pub async fn probe_lock_conditions(&self) -> Result<ConditionProbe, StoreError> {
        let key = format!(
            "locks/doctor-probe-{}",
            self.lock_nonce("locks/doctor-probe", 8)?
        );
        let body = |n: u64| LockRecord::new("doctor", Utc::now(), Duration::from_secs(1), n).body();
        let result = async {
            let Put::Written { etag, .. } = self.put_lock(&key, body(0), Cond::Create).await?
            else {
                return Ok(ConditionProbe::Ignored(
                    "If-None-Match: * (a new key was refused)",
                ));
            };
            if let Put::Written { .. } = self.put_lock(&key, body(1), Cond::Create).await? {
                return Ok(ConditionProbe::Ignored("If-None-Match: * on PutObject"));
            }
            if let Put::Written { .. } = self
                .put_lock(
                    &key,
                    body(2),
                    Cond::Match("\"00000000000000000000000000000000\""),
                )
                .await?
            {
                return Ok(ConditionProbe::Ignored(
                    "If-Match on PutObject (a wrong ETag)",
                ));
            }
            if let Put::Conflict = self.put_lock(&key, body(3), Cond::Match(&etag)).await? {
                return Ok(ConditionProbe::Ignored(
                    "If-Match on PutObject (the right ETag was refused)",
                ));
            }
            Ok(ConditionProbe::Honoured)
        }
        .await;
        if let Ok(versions) = self.versions(&key).await {
            for (v, _) in versions {
                let _ = self.delete_version(&key, &v).await;
            }
        }
        result
    }
}

/// The version this holder last wrote, for the next conditional write.
#[derive(Debug)]
struct Held {
    etag: String,
    /// Every version id this holder wrote and has not deleted yet.
    versions: Vec<String>,
    refresh: u64,
}

/// What [`LockGuard::check`] reads without a request.
#[derive(Debug)]
struct Status {
    /// When the last successful write was sent (monotonic).
    last_ok: Instant,
    /// Why the lock is lost, once it is: never cleared.
    lost: Option<String>,
}

struct Shared {
    store: S3Store,
    name: String,
    key: String,
    token: String,
    acquired: DateTime<Utc>,
    lease: Duration,
    /// Serialises writes: the refresher's and `confirm`'s.
    held: tokio::sync::Mutex<Held>,
    status: Mutex<Status>,
}

enum RefreshError {
    Lost,
    /// Not refreshed this time; the lease may still hold.
    Failed(StoreError),
}

impl Shared {
    fn lost_error(&self, detail: String) -> StoreError {
        StoreError::LeaseLost {
            lock: self.name.clone(),
            store: self.store.url.clone(),
            location: format!("{}/{}", self.store.url, self.key),
            detail,
        }
    }

    fn check(&self) -> Result<(), StoreError> {
        let mut status = self.status.lock().expect("lease status lock");
        if status.lost.is_none() {
            let since = status.last_ok.elapsed();
            let usable = self.lease.saturating_sub(margin(self.lease));
            if since > usable {
                status.lost = Some(format!(
                    "its lease ({} s) was last refreshed {} s ago, past the {} s safety margin",
                    self.lease.as_secs(),
                    since.as_secs(),
                    margin(self.lease).as_secs()
                ));
            }
        }
        match &status.lost {
            Some(detail) => Err(self.lost_error(detail.clone())),
            None => Ok(()),
        }
    }

    fn mark_lost(&self, detail: String) {
        let mut status = self.status.lock().expect("lease status lock");
        if status.lost.is_none() {
            tracing::error!(object = %self.key, "{detail}");
            status.lost = Some(detail);
        }
    }

    /// Rewrites the lock object if it is still the version this holder
    /// wrote last.
    async fn refresh(&self) -> Result<(), RefreshError> {
        let mut held = self.held.lock().await;
        if self.check().is_err() {
            return Err(RefreshError::Lost);
        }
        let record = LockRecord::new(&self.token, self.acquired, self.lease, held.refresh + 1);
        let sent = Instant::now();
        match self
            .store
            .put_lock(&self.key, record.body(), Cond::Match(&held.etag))
            .await
        {
            Ok(Put::Written { etag, version }) => {
                held.etag = etag;
                held.refresh += 1;
                // The versions before it are no longer read: keep one.
                let old = std::mem::take(&mut held.versions);
                if let Some(v) = version {
                    held.versions.push(v);
                }
                for v in old {
                    if self.store.delete_version(&self.key, &v).await.is_err() {
                        held.versions.push(v);
                    }
                }
                let mut status = self.status.lock().expect("lease status lock");
                if status.lost.is_none() {
                    status.last_ok = sent;
                }
                Ok(())
            }
            Ok(Put::Conflict) => {
                self.mark_lost(
                    "its lock object was changed by someone else (taken over as stale, or removed), so its conditional refresh was refused"
                        .into(),
                );
                Err(RefreshError::Lost)
            }
            Err(e) => {
                tracing::warn!(object = %self.key, error = %e, "unable to refresh the repository lock");
                Err(RefreshError::Failed(e))
            }
        }
    }

    /// Deletes exactly the versions this holder wrote; on a bucket without
    /// versioning, the object only if it is still this holder's last write
    /// (`DeleteObject` with `If-Match`).
    async fn remove_own(&self) {
        let (versions, etag) = {
            let mut held = self.held.lock().await;
            (std::mem::take(&mut held.versions), held.etag.clone())
        };
        if versions.is_empty() {
            let res = self
                .store
                .client
                .delete_object()
                .bucket(&self.store.config.bucket)
                .key(self.store.full_key(&self.key))
                .if_match(etag)
                .send()
                .await;
            if let Err(e) = res {
                let f = failure(&e);
                if f.status != Some(412) && f.status != Some(404) {
                    tracing::warn!(object = %self.key, error = %f, "unable to remove this process's lock; it goes stale when its lease ends");
                }
            }
            return;
        }
        for v in versions {
            if let Err(e) = self.store.delete_version(&self.key, &v).await {
                tracing::warn!(object = %self.key, version = %v, error = %e, "unable to remove this process's lock version; it goes stale when its lease ends");
            }
        }
    }
}

struct S3Lock {
    shared: Arc<Shared>,
    refresher: tokio::task::JoinHandle<()>,
    released: bool,
}

impl S3Lock {
    fn new(
        store: S3Store,
        name: String,
        key: String,
        token: String,
        acquired: DateTime<Utc>,
        held: Held,
        sent: Instant,
    ) -> Self {
        let lease = store.lease;
        let shared = Arc::new(Shared {
            store,
            name,
            key,
            token,
            acquired,
            lease,
            held: tokio::sync::Mutex::new(held),
            status: Mutex::new(Status {
                last_ok: sent,
                lost: None,
            }),
        });
        let s = shared.clone();
        let refresher = tokio::spawn(async move {
            let every = lease / 3;
            // After a failure, try again soon: the margin is a fifth of
            // the lease, so several more attempts fit before it.
            let retry = (lease / 20).max(Duration::from_millis(100));
            let mut wait = every;
            loop {
                tokio::time::sleep(wait).await;
                match s.refresh().await {
                    Ok(()) => wait = every,
                    Err(RefreshError::Lost) => break,
                    Err(RefreshError::Failed(_)) => wait = retry,
                }
            }
        });
        S3Lock {
            shared,
            refresher,
            released: false,
        }
    }
}

#[async_trait]
impl LockGuard for S3Lock {
    fn check(&self) -> Result<(), StoreError> {
        self.shared.check()
    }

    async fn confirm(&self) -> Result<(), StoreError> {
        match self.shared.refresh().await {
            Ok(()) => self.shared.check(),
            Err(RefreshError::Lost) => self.shared.check(),
            // Not refreshed now, but the lease may still have its margin.
            Err(RefreshError::Failed(e)) => self.shared.check().map_err(|_| e),
        }
    }

    async fn release(mut self: Box<Self>) {
        self.refresher.abort();
        self.released = true;
        self.shared.remove_own().await;
    }
}

impl Drop for S3Lock {
    fn drop(&mut self) {
        self.refresher.abort();
        if !self.released {
            // Best effort: a lock left behind goes stale when its lease ends,
            // or at once for a later process on this host.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let shared = self.shared.clone();
                handle.spawn(async move { shared.remove_own().await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(lease_secs: u64, modified: &str, now: Option<&str>) -> Seen {
        let t = |s: &str| s.parse::<DateTime<Utc>>().unwrap();
        Seen {
            record: Some(LockRecord {
                host: "elsewhere".into(),
                pid: 1,
                // The holder's clock says its lease ended long ago: ignored.
                acquired: t("2000-01-01T00:00:00Z"),
                expires: t("2000-01-01T00:15:00Z"),
                lease_secs,
                holder: "x".into(),
                refresh: 0,
            }),
            etag: "\"e\"".into(),
            version: None,
            last_modified: t(modified),
            server_now: now.map(t),
        }
    }

    #[test]
    fn a_lock_is_stale_only_when_the_servers_clock_says_its_lease_and_allowance_ran_out() {
        let m = "2026-12-03T12:00:00Z";
        assert!(!seen(60, m, Some("2026-12-03T12:01:00Z")).is_stale());
        assert!(!seen(60, m, Some("2026-12-03T12:01:02Z")).is_stale());
        assert!(seen(60, m, Some("2026-12-03T12:01:03Z")).is_stale());
        // No Date from the server: never stale by time.
        assert!(!seen(60, m, None).is_stale());
        // A record claiming a lease of years is judged by the cap.
        assert!(seen(10_000_000, m, Some("2026-12-03T13:00:03Z")).is_stale());
    }

    #[test]
    fn the_margin_leaves_a_fifth_of_the_lease() {
        assert_eq!(margin(DEFAULT_LEASE), Duration::from_secs(180));
        assert_eq!(margin(Duration::from_secs(5)), Duration::from_secs(1));
    }
}
