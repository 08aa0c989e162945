//! The S3 backend: objects in a bucket under a prefix, each write-once and
//! under S3 Object Lock retention, through the official `aws-sdk-s3`.
//!
//! * Create-only puts send `If-None-Match: *` (also on the multipart
//!   completion); the server answers 412 instead of overwriting. Multipart
//!   uploads also HEAD first, since not every server checks the condition on
//!   completion (SeaweedFS 4.48 lets concurrent completions through). Keys
//!   are content hashes, so that race can only write the same bytes again,
//!   and reads take a key's original version anyway.
//! * Every put carries `x-amz-checksum-sha256`, so the server verifies the
//!   bytes on arrival (AWS requires a checksum with Object Lock). Multipart
//!   parts each carry their own; the composite the server keeps is not the
//!   object's hash, which holdfast keeps in the key.
//! * Large objects go up as parallel multipart uploads and come down as
//!   parallel ranged GETs.
//! * The SDK retries throttling, timeouts and 5xx with exponential backoff and
//!   jitter (standard mode); what reaches the caller is final.
//! * Deleting removes every version of a key by version id: a plain DELETE on a
//!   versioned bucket only hides the object behind a delete marker.
//! * Reads go to each key's **original** (oldest) version. holdfast never
//!   overwrites a key, so any later version, and any delete marker, is
//!   somebody else's doing: an insider who overwrites or "deletes" every key
//!   with the backup credentials changes nothing holdfast reads, and the
//!   locked originals restore. Listings come from the version listing for the
//!   same reason. (Lock objects under `locks/` are the one mutable thing and
//!   are read at their latest version.)

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::{ByteStream, DateTime as AwsDateTime};
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, ObjectLockMode,
    ObjectLockRetention, ObjectLockRetentionMode,
};
use aws_sdk_s3::Client;
use base64::Engine;
use bytes::{Bytes, BytesMut};
use chrono::{DateTime, TimeZone, Utc};
use sha2::{Digest, Sha256};

use super::{
    check_key, Capabilities, LockGuard, LockMode, ObjectInfo, PutOptions, Retention, Store,
    StoreError,
};
use crate::secret::Secret;

/// Objects larger than this go up as multipart uploads, in parts of this size,
/// and come down as ranged GETs of this size in parallel.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;
/// How long a repository lock object holds without being refreshed.
const LOCK_LEASE: Duration = Duration::from_secs(15 * 60);

/// Where an S3 repository lives and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Config {
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket root.
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible server; `None` for AWS.
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: bool,
    /// Static credentials from the plan; `None` uses the default AWS chain
    /// (environment, profile, web identity, instance metadata).
    pub credentials: Option<StaticCredentials>,
    pub part_size: usize,
    /// Attempts per request, counting the first (SDK standard retry mode).
    pub max_attempts: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    pub access_key_id: String,
    pub secret: SecretSource,
}

/// A secret given in the plan (after `${VAR}` expansion) or read from a file
/// when the store is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource {
    Value(Secret),
    File(std::path::PathBuf),
}

impl SecretSource {
    fn resolve(&self, store: &str) -> Result<Secret, StoreError> {
        match self {
            SecretSource::Value(s) => Ok(s.clone()),
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
                    op: "read the secret_access_key_file for",
                    store: store.to_string(),
                    key: path.display().to_string(),
                    source,
                })?;
                Ok(Secret::new(text.trim()))
            }
        }
    }
}

impl S3Config {
    pub fn new(bucket: impl Into<String>, prefix: impl Into<String>) -> Self {
        S3Config {
            bucket: bucket.into(),
            prefix: prefix.into().trim_matches('/').to_string(),
            endpoint: None,
            region: None,
            path_style: false,
            credentials: None,
            part_size: DEFAULT_PART_SIZE,
            max_attempts: 5,
        }
    }

    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// An S3 client for one bucket, shared by the store and the `repo`/`doctor`
/// commands, which need bucket-level calls the [`Store`] trait does not carry.
#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    config: Arc<S3Config>,
    url: String,
    /// Each key's original version and size, as listed or written.
    originals: Arc<std::sync::Mutex<std::collections::HashMap<String, Original>>>,
}

/// One entry of a version listing.
#[derive(Debug, Clone)]
struct Listed {
    /// The bucket key.
    key: String,
    version: Option<String>,
    size: u64,
    delete_marker: bool,
}

#[derive(Debug, Clone)]
struct Original {
    /// `None` on a bucket that never had versioning.
    version: Option<String>,
    size: u64,
}

/// What a failed request came back with, for messages and decisions.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: Option<u16>,
    pub code: String,
    pub message: String,
    /// No HTTP answer at all, or an answer worth retrying later.
    pub transient: bool,
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(s) => write!(f, "HTTP {s} {}", self.code)?,
            None => write!(f, "{}", self.code)?,
        }
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

pub fn failure<E>(err: &SdkError<E, HttpResponse>) -> Failure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match err {
        SdkError::ServiceError(se) => {
            let e = se.err();
            let status = Some(se.raw().status().as_u16());
            let code = e.code().unwrap_or("").to_string();
            let code = if code.is_empty() {
                match status {
                    Some(404) => "NotFound".to_string(),
                    Some(412) => "PreconditionFailed".to_string(),
                    Some(403) => "AccessDenied".to_string(),
                    Some(s) => format!("HTTP{s}"),
                    None => "Unknown".into(),
                }
            } else {
                code
            };
            Failure {
                status,
                transient: status.is_some_and(|s| s >= 500 || s == 429)
                    || code == "SlowDown"
                    || code == "Throttling",
                code,
                message: e.message().unwrap_or("").to_string(),
            }
        }
        SdkError::TimeoutError(_) => Failure {
            status: None,
            code: "Timeout".into(),
            message: "the request timed out".into(),
            transient: true,
        },
        SdkError::DispatchFailure(d) => Failure {
            status: None,
            code: "ConnectionFailed".into(),
            message: d
                .as_connector_error()
                .map(|c| error_chain(c))
                .unwrap_or_else(|| format!("{d:?}")),
            transient: true,
        },
        SdkError::ResponseError(r) => Failure {
            status: None,
            code: "BadResponse".into(),
            message: format!("{r:?}"),
            transient: true,
        },
        other => Failure {
            status: None,
            code: "RequestFailed".into(),
            message: error_chain(other),
            transient: false,
        },
    }
}

fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut cur = e.source();
    while let Some(s) = cur {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cur = s.source();
    }
    out
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn aws_time(t: DateTime<Utc>) -> AwsDateTime {
    // S3 keeps whole seconds; round up so the lock never ends before `t`.
    let secs = t.timestamp() + i64::from(t.timestamp_subsec_nanos() > 0);
    AwsDateTime::from_secs(secs)
}

fn chrono_time(t: &AwsDateTime) -> Option<DateTime<Utc>> {
    Utc.timestamp_opt(t.secs(), t.subsec_nanos()).single()
}

fn lock_mode(mode: LockMode) -> ObjectLockMode {
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

impl S3Store {
    /// Builds the client; no request is made until the first call.
    pub async fn open(config: S3Config) -> Result<Self, StoreError> {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
        if let Some(region) = &config.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let Some(creds) = &config.credentials {
            let secret = creds.secret.resolve(&config.url())?;
            loader = loader.credentials_provider(Credentials::new(
                creds.access_key_id.clone(),
                secret.expose().to_string(),
                None,
                None,
                "holdfast-plan",
            ));
        }
        let shared = loader.load().await;
        let mut builder = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(config.path_style)
            .retry_config(
                RetryConfig::standard()
                    .with_max_attempts(config.max_attempts.max(1))
                    .with_initial_backoff(Duration::from_millis(200))
                    .with_max_backoff(Duration::from_secs(10)),
            )
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(300))
                    .build(),
            )
            // holdfast sends its own SHA-256 and checks every byte it reads
            // against content hashes; the SDK's CRC32s would be a second pass.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        if shared.region().is_none() {
            builder = builder.region(Region::new("us-east-1"));
        }
        if let Some(endpoint) = &config.endpoint {
            builder = builder.endpoint_url(endpoint.trim_end_matches('/'));
        }
        let url = config.url();
        Ok(S3Store {
            client: Client::from_conf(builder.build()),
            config: Arc::new(config),
            url,
            originals: Default::default(),
        })
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.config.bucket
    }

    pub fn config(&self) -> &S3Config {
        &self.config
    }

    /// The bucket key of a store key.
    pub fn full_key(&self, key: &str) -> String {
        if self.config.prefix.is_empty() {
            key.to_string()
        } else {
            format!("{}/{key}", self.config.prefix)
        }
    }

    fn store_key<'a>(&self, full: &'a str) -> &'a str {
        if self.config.prefix.is_empty() {
            full
        } else {
            full.strip_prefix(&self.config.prefix)
                .and_then(|k| k.strip_prefix('/'))
                .unwrap_or(full)
        }
    }

    /// Maps a request failure onto the store's error contract.
    pub fn error<E>(
        &self,
        op: &'static str,
        key: &str,
        err: SdkError<E, HttpResponse>,
    ) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let f = failure(&err);
        self.failure_error(op, key, f)
    }

    fn failure_error(&self, op: &'static str, key: &str, f: Failure) -> StoreError {
        let store = self.url.clone();
        let key = key.to_string();
        match (f.status, f.code.as_str()) {
            (_, "NoSuchBucket") => StoreError::NoBucket {
                store,
                bucket: self.config.bucket.clone(),
            },
            (Some(404), _) | (_, "NoSuchKey") | (_, "NotFound") | (_, "NoSuchVersion") => {
                StoreError::NotFound { store, key }
            }
            (Some(412), _) | (_, "PreconditionFailed") if op == "put" => {
                StoreError::AlreadyExists { store, key }
            }
            (Some(403), _) | (_, "AccessDenied") => StoreError::Denied {
                op,
                store,
                key,
                detail: f.to_string(),
            },
            _ => StoreError::Io {
                op,
                store,
                key,
                source: std::io::Error::new(
                    if f.transient {
                        std::io::ErrorKind::TimedOut
                    } else {
                        std::io::ErrorKind::Other
                    },
                    f.to_string(),
                ),
            },
        }
    }

    fn integrity_error(&self, op: &'static str, key: &str, what: String) -> StoreError {
        StoreError::Io {
            op,
            store: self.url.clone(),
            key: key.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
        }
    }

    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    async fn put_single(
        &self,
        key: &str,
        data: Bytes,
        opts: &PutOptions,
    ) -> Result<(), StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .content_length(data.len() as i64)
            .checksum_sha256(b64(&opts.sha256.0))
            .if_none_match("*")
            .body(ByteStream::from(data));
        if let Some(r) = &opts.retention {
            req = req
                .object_lock_mode(lock_mode(r.mode))
                .object_lock_retain_until_date(aws_time(r.until));
        }
        let size = req.get_content_length().unwrap_or(0) as u64;
        let out = req
            .customize()
            // The signed x-amz-checksum-sha256 header already covers the body;
            // signing the payload too would hash every byte a second time.
            .disable_payload_signing()
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        self.remember(key, out.version_id(), size);
        Ok(())
    }

    fn remember(&self, key: &str, version: Option<&str>, size: u64) {
        if key.starts_with("locks/") {
            return;
        }
        self.originals.lock().expect("originals lock").insert(
            key.to_string(),
            Original {
                version: version.filter(|v| *v != "null").map(str::to_string),
                size,
            },
        );
    }

    /// The original version of `key`: the oldest one that is not a delete
    /// marker. Later versions are reported, since holdfast never writes them.
    async fn original(&self, key: &str) -> Result<Original, StoreError> {
        if let Some(o) = self.originals.lock().expect("originals lock").get(key) {
            return Ok(o.clone());
        }
        let full = self.full_key(key);
        let listed = self.list_versions(&full, "list versions of", key).await?;
        let exact = listed.iter().filter(|v| v.key == full);
        let found: Vec<(Option<String>, u64)> = exact
            .clone()
            .filter(|v| !v.delete_marker)
            .map(|v| (v.version.clone(), v.size))
            .collect();
        let markers = exact.filter(|v| v.delete_marker).count();
        // Versions are listed newest first.
        let Some((version, size)) = found.last().cloned() else {
            return Err(StoreError::NotFound {
                store: self.url.clone(),
                key: key.to_string(),
            });
        };
        if found.len() > 1 || markers > 0 {
            tracing::warn!(
                object = %key,
                versions = found.len(),
                delete_markers = markers,
                "object was overwritten or deleted outside holdfast; reading its original version"
            );
        }
        self.remember(key, version.as_deref(), size);
        Ok(Original {
            version: version.filter(|v| v != "null"),
            size,
        })
    }

    /// The version to read `key` at: its original, or the latest for locks.
    async fn read_version(&self, key: &str) -> Result<Option<String>, StoreError> {
        if key.starts_with("locks/") {
            return Ok(None);
        }
        Ok(self.original(key).await?.version)
    }

    async fn put_multipart(
        &self,
        key: &str,
        data: Bytes,
        opts: &PutOptions,
    ) -> Result<(), StoreError> {
        // A HEAD first: not every server honours If-None-Match on completion,
        // and this saves uploading a pack that is already there.
        if self.exists(key).await? {
            return Err(StoreError::AlreadyExists {
                store: self.url.clone(),
                key: key.to_string(),
            });
        }
        let full = self.full_key(key);
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&self.config.bucket)
            .key(&full)
            .checksum_algorithm(ChecksumAlgorithm::Sha256);
        if let Some(r) = &opts.retention {
            req = req
                .object_lock_mode(lock_mode(r.mode))
                .object_lock_retain_until_date(aws_time(r.until));
        }
        let created = req.send().await.map_err(|e| self.error("put", key, e))?;
        let upload_id = created.upload_id().unwrap_or_default().to_string();
        let result = self.upload_parts(key, &full, &upload_id, data).await;
        if result.is_err() {
            let _ = self
                .client
                .abort_multipart_upload()
                .bucket(&self.config.bucket)
                .key(&full)
                .upload_id(&upload_id)
                .send()
                .await;
        }
        result
    }

    async fn upload_parts(
        &self,
        key: &str,
        full: &str,
        upload_id: &str,
        data: Bytes,
    ) -> Result<(), StoreError> {
        let part_size = self.config.part_size.max(5 * 1024 * 1024);
        let size = data.len() as u64;
        let mut tasks = tokio::task::JoinSet::new();
        for (i, start) in (0..data.len()).step_by(part_size).enumerate() {
            let part = data.slice(start..(start + part_size).min(data.len()));
            let this = self.clone();
            let (full, upload_id, key) = (full.to_string(), upload_id.to_string(), key.to_string());
            tasks.spawn(async move {
                let number = i as i32 + 1;
                let checksum = b64(&Sha256::digest(&part));
                let out = this
                    .client
                    .upload_part()
                    .bucket(&this.config.bucket)
                    .key(&full)
                    .upload_id(&upload_id)
                    .part_number(number)
                    .content_length(part.len() as i64)
                    .checksum_sha256(&checksum)
                    .body(ByteStream::from(part))
                    .customize()
                    .disable_payload_signing()
                    .send()
                    .await
                    .map_err(|e| this.error("put", &key, e))?;
                Ok::<_, StoreError>(
                    CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .checksum_sha256(checksum)
                        .build(),
                )
            });
        }
        let mut parts = Vec::new();
        while let Some(done) = tasks.join_next().await {
            parts.push(done.expect("upload task panicked")?);
        }
        parts.sort_by_key(|p| p.part_number());
        let done = self
            .client
            .complete_multipart_upload()
            .bucket(&self.config.bucket)
            .key(full)
            .upload_id(upload_id)
            .if_none_match("*")
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        self.remember(key, done.version_id(), size);
        Ok(())
    }

    /// One ranged GET; returns the bytes and the object's total size.
    async fn get_one(
        &self,
        key: &str,
        range: Option<(u64, u64)>,
    ) -> Result<(Bytes, u64), StoreError> {
        let version = self.read_version(key).await?;
        let mut req = self
            .client
            .get_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .set_version_id(version);
        if let Some((start, end)) = range {
            req = req.range(format!("bytes={start}-{}", end - 1));
        }
        let out = req.send().await.map_err(|e| self.error("get", key, e))?;
        let total = out
            .content_range()
            .and_then(|r| r.rsplit('/').next())
            .and_then(|t| t.parse::<u64>().ok());
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| {
                self.failure_error(
                    "get",
                    key,
                    Failure {
                        status: None,
                        code: "BodyInterrupted".into(),
                        message: error_chain(&e),
                        transient: true,
                    },
                )
            })?
            .into_bytes();
        let total = total.unwrap_or(body.len() as u64);
        Ok((body, total))
    }

    /// Reads `start..end`, splitting it into parallel ranged GETs; fails with
    /// `Truncated` when the object ends early.
    async fn get_span(&self, key: &str, start: u64, end: u64) -> Result<Bytes, StoreError> {
        let part = self.config.part_size as u64;
        let first_end = end.min(start + part);
        let (first, total) = match self.get_one(key, Some((start, first_end))).await {
            Ok(v) => v,
            Err(StoreError::Io { source, .. })
                if source.to_string().contains("InvalidRange")
                    || source.to_string().contains("416") =>
            {
                let size = self.head(key).await?.size;
                return Err(StoreError::Truncated {
                    store: self.url.clone(),
                    key: key.to_string(),
                    offset: start,
                    end,
                    size,
                });
            }
            Err(e) => return Err(e),
        };
        if total < end || (first.len() as u64) < first_end - start {
            return Err(StoreError::Truncated {
                store: self.url.clone(),
                key: key.to_string(),
                offset: start,
                end,
                size: total,
            });
        }
        if first_end == end {
            return Ok(first);
        }
        let mut tasks = tokio::task::JoinSet::new();
        let mut offset = first_end;
        let mut index = 0usize;
        while offset < end {
            let stop = end.min(offset + part);
            let this = self.clone();
            let key = key.to_string();
            index += 1;
            let i = index;
            tasks.spawn(async move {
                this.get_one(&key, Some((offset, stop)))
                    .await
                    .map(|(b, _)| (i, b, stop - offset))
            });
            offset = stop;
        }
        let mut pieces = vec![Bytes::new(); index + 1];
        pieces[0] = first;
        while let Some(done) = tasks.join_next().await {
            let (i, bytes, want) = done.expect("download task panicked")?;
            if (bytes.len() as u64) != want {
                return Err(self.integrity_error(
                    "get",
                    key,
                    format!(
                        "a ranged read returned {} bytes, expected {want}",
                        bytes.len()
                    ),
                ));
            }
            pieces[i] = bytes;
        }
        let mut out = BytesMut::with_capacity((end - start) as usize);
        for p in pieces {
            out.extend_from_slice(&p);
        }
        Ok(out.freeze())
    }

    /// Every version and delete marker of exactly `key`.
    pub async fn versions(&self, key: &str) -> Result<Vec<(String, bool)>, StoreError> {
        let full = self.full_key(key);
        Ok(self
            .list_versions(&full, "list versions of", key)
            .await?
            .into_iter()
            .filter(|v| v.key == full)
            .map(|v| (v.version.unwrap_or_else(|| "null".into()), v.delete_marker))
            .collect())
    }

    /// Every version and delete marker under a bucket prefix, in listing
    /// order (by key, newest version first within a key).
    async fn list_versions(
        &self,
        full_prefix: &str,
        op: &'static str,
        key: &str,
    ) -> Result<Vec<Listed>, StoreError> {
        let mut out = Vec::new();
        let mut key_marker: Option<String> = None;
        let mut version_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_object_versions()
                .bucket(&self.config.bucket)
                .prefix(full_prefix)
                .set_key_marker(key_marker.take())
                .set_version_id_marker(version_marker.take())
                .send()
                .await
                .map_err(|e| self.error(op, key, e))?;
            let mut page_items: Vec<Listed> = Vec::new();
            for v in page.versions() {
                let Some(k) = v.key() else { continue };
                page_items.push(Listed {
                    key: k.to_string(),
                    version: v.version_id().map(str::to_string),
                    size: v.size().unwrap_or(0).max(0) as u64,
                    delete_marker: false,
                });
            }
            for m in page.delete_markers() {
                let Some(k) = m.key() else { continue };
                page_items.push(Listed {
                    key: k.to_string(),
                    version: m.version_id().map(str::to_string),
                    size: 0,
                    delete_marker: true,
                });
            }
            // Versions and markers come in two lists; put them back in key
            // order, keeping each list's newest-first order within a key
            // (the sort is stable).
            page_items.sort_by(|a, b| a.key.cmp(&b.key));
            out.extend(page_items);
            if page.is_truncated() != Some(true) || page.next_key_marker().is_none() {
                break;
            }
            key_marker = page.next_key_marker().map(str::to_string);
            version_marker = page.next_version_id_marker().map(str::to_string);
        }
        Ok(out)
    }

    /// Deletes one version; a lock refusal comes back as `Retained` when the
    /// version's retention can be read, `Denied` otherwise.
    pub async fn delete_version(&self, key: &str, version: &str) -> Result<(), StoreError> {
        let res = self
            .client
            .delete_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .version_id(version)
            .send()
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) => {
                let err = self.error("delete", key, e);
                if matches!(err, StoreError::Denied { .. }) {
                    if let Ok(Some(r)) = self.version_retention(key, version).await {
                        if r.until > Utc::now() {
                            return Err(StoreError::Retained {
                                store: self.url.clone(),
                                key: key.to_string(),
                                mode: r.mode,
                                until: r.until,
                            });
                        }
                    }
                }
                Err(err)
            }
        }
    }

    async fn version_retention(
        &self,
        key: &str,
        version: &str,
    ) -> Result<Option<Retention>, StoreError> {
        let out = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .version_id(version)
            .send()
            .await
            .map_err(|e| self.error("head", key, e))?;
        Ok(retention_of(
            out.object_lock_mode().map(|m| m.as_str()),
            out.object_lock_retain_until_date(),
        ))
    }

    /// Overwrites `key` unconditionally and without retention: only for the
    /// lock objects under `locks/`, which are the one mutable thing.
    async fn put_mutable(&self, key: &str, data: Bytes) -> Result<(), StoreError> {
        self.client
            .put_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .checksum_sha256(b64(&Sha256::digest(&data)))
            .body(ByteStream::from(data))
            .send()
            .await
            .map_err(|e| self.error("put", key, e))?;
        Ok(())
    }
}

fn retention_of(mode: Option<&str>, until: Option<&AwsDateTime>) -> Option<Retention> {
    Some(Retention {
        mode: from_lock_mode(mode?)?,
        until: chrono_time(until?)?,
    })
}

/// The lock object's contents.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct LockRecord {
    host: String,
    pid: u32,
    acquired: DateTime<Utc>,
    expires: DateTime<Utc>,
}

impl LockRecord {
    fn new(acquired: DateTime<Utc>) -> Self {
        LockRecord {
            host: crate::hostname().unwrap_or_else(|| "unknown".into()),
            pid: std::process::id(),
            acquired,
            expires: Utc::now() + chrono::Duration::from_std(LOCK_LEASE).expect("lease fits"),
        }
    }

    /// Whether the holder is certainly gone: its lease ran out, or it was a
    /// process on this host that no longer exists.
    fn is_stale(&self) -> bool {
        if self.expires < Utc::now() {
            return true;
        }
        let here = crate::hostname().unwrap_or_default();
        self.host == here && !std::path::Path::new(&format!("/proc/{}", self.pid)).exists()
    }
}

struct S3Lock {
    store: S3Store,
    key: String,
    refresher: tokio::task::JoinHandle<()>,
    released: bool,
}

#[async_trait]
impl LockGuard for S3Lock {
    async fn release(mut self: Box<Self>) {
        self.refresher.abort();
        self.released = true;
        if let Ok(versions) = self.store.versions(&self.key).await {
            for (v, _) in versions {
                let _ = self.store.delete_version(&self.key, &v).await;
            }
        }
    }
}

impl Drop for S3Lock {
    fn drop(&mut self) {
        self.refresher.abort();
        if !self.released {
            // Best effort: a lock left behind goes stale when its lease ends,
            // or at once for a later process on this host.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                let (store, key) = (self.store.clone(), self.key.clone());
                handle.spawn(async move {
                    let _ = store
                        .client
                        .delete_object()
                        .bucket(&store.config.bucket)
                        .key(store.full_key(&key))
                        .send()
                        .await;
                });
            }
        }
    }
}

#[async_trait]
impl Store for S3Store {
    fn url(&self) -> String {
        self.url.clone()
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            server_enforced_lock: true,
            atomic_create: true,
            versioning: true,
            parallel_reads: 8,
        }
    }

    async fn put(&self, key: &str, data: Bytes, opts: &PutOptions) -> Result<(), StoreError> {
        check_key(key)?;
        if data.len() > self.config.part_size {
            self.put_multipart(key, data, opts).await
        } else {
            self.put_single(key, data, opts).await
        }
    }

    async fn get(&self, key: &str) -> Result<Bytes, StoreError> {
        check_key(key)?;
        let part = self.config.part_size as u64;
        if !key.starts_with("locks/") {
            let size = self.original(key).await?.size;
            if size <= part {
                return self.get_one(key, None).await.map(|(b, _)| b);
            }
            return self.get_span(key, 0, size).await;
        }
        let (first, total) = match self.get_one(key, Some((0, part))).await {
            Ok(v) => v,
            // An empty object has no byte 0 to range over.
            Err(StoreError::Io { source, .. })
                if source.to_string().contains("InvalidRange")
                    || source.to_string().contains("416") =>
            {
                return self.get_one(key, None).await.map(|(b, _)| b);
            }
            Err(e) => return Err(e),
        };
        if total <= part {
            return Ok(first);
        }
        let rest = self.get_span(key, part, total).await?;
        let mut out = BytesMut::with_capacity(total as usize);
        out.extend_from_slice(&first);
        out.extend_from_slice(&rest);
        Ok(out.freeze())
    }

    async fn get_range(&self, key: &str, offset: u64, len: u64) -> Result<Bytes, StoreError> {
        check_key(key)?;
        if len == 0 {
            let size = self.head(key).await?.size;
            if offset > size {
                return Err(StoreError::Truncated {
                    store: self.url.clone(),
                    key: key.to_string(),
                    offset,
                    end: offset,
                    size,
                });
            }
            return Ok(Bytes::new());
        }
        self.get_span(key, offset, offset + len).await
    }

    async fn head(&self, key: &str) -> Result<ObjectInfo, StoreError> {
        check_key(key)?;
        let version = self.read_version(key).await?;
        let out = self
            .client
            .head_object()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .set_version_id(version)
            .send()
            .await
            .map_err(|e| self.error("head", key, e))?;
        Ok(ObjectInfo {
            key: key.to_string(),
            size: out.content_length().unwrap_or(0).max(0) as u64,
            retention: retention_of(
                out.object_lock_mode().map(|m| m.as_str()),
                out.object_lock_retain_until_date(),
            ),
        })
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>, StoreError> {
        let full = self.full_key(prefix);
        let full = if prefix.is_empty() && !self.config.prefix.is_empty() {
            format!("{}/", self.config.prefix)
        } else {
            full
        };
        // Every key with a version that is not a delete marker, at its
        // original (oldest) version: listed newest first within each key.
        let mut originals: std::collections::BTreeMap<String, (Option<String>, u64)> =
            std::collections::BTreeMap::new();
        for v in self.list_versions(&full, "list", prefix).await? {
            if !v.delete_marker {
                originals.insert(self.store_key(&v.key).to_string(), (v.version, v.size));
            }
        }
        let mut out = Vec::with_capacity(originals.len());
        for (key, (version, size)) in originals {
            if key.starts_with("locks/") {
                continue;
            }
            self.remember(&key, version.as_deref(), size);
            out.push(ObjectInfo {
                key,
                size,
                retention: None,
            });
        }
        Ok(out)
    }

    async fn extend_retention(&self, key: &str, retention: &Retention) -> Result<(), StoreError> {
        check_key(key)?;
        let current = self.head(key).await?.retention;
        if let Some(cur) = current {
            if cur.until > retention.until {
                return Err(StoreError::RetentionShortening {
                    store: self.url.clone(),
                    key: key.to_string(),
                    current: cur.until,
                    requested: retention.until,
                });
            }
            if cur.until == retention.until {
                return Ok(());
            }
        }
        // COMPLIANCE stays COMPLIANCE: it is the stronger promise.
        let mode = match current {
            Some(Retention {
                mode: LockMode::Compliance,
                ..
            }) => LockMode::Compliance,
            _ => retention.mode,
        };
        let version = self.read_version(key).await?;
        self.client
            .put_object_retention()
            .bucket(&self.config.bucket)
            .key(self.full_key(key))
            .set_version_id(version)
            .retention(
                ObjectLockRetention::builder()
                    .mode(match mode {
                        LockMode::Compliance => ObjectLockRetentionMode::Compliance,
                        LockMode::Governance => ObjectLockRetentionMode::Governance,
                    })
                    .retain_until_date(aws_time(retention.until))
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("extend retention of", key, e))?;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<(), StoreError> {
        check_key(key)?;
        self.originals.lock().expect("originals lock").remove(key);
        let versions = self.versions(key).await?;
        if versions.iter().all(|(_, marker)| *marker) {
            return Err(StoreError::NotFound {
                store: self.url.clone(),
                key: key.to_string(),
            });
        }
        // Data versions first, so a refusal leaves the object readable.
        let mut ordered = versions;
        ordered.sort_by_key(|(_, marker)| *marker);
        for (version, _) in ordered {
            self.delete_version(key, &version).await?;
        }
        Ok(())
    }

    async fn try_lock(&self, name: &str) -> Result<Box<dyn LockGuard>, StoreError> {
        let key = format!("locks/{name}");
        check_key(&key)?;
        let acquired = Utc::now();
        let record = LockRecord::new(acquired);
        let body = Bytes::from(serde_json::to_vec(&record).expect("lock record serialises"));
        let opts = PutOptions {
            sha256: crate::ids::Hash256(Sha256::digest(&body).into()),
            retention: None,
        };
        let mut attempt = 0;
        loop {
            attempt += 1;
            match self.put_single(&key, body.clone(), &opts).await {
                Ok(()) => break,
                Err(StoreError::AlreadyExists { .. }) if attempt < 3 => {
                    let held = self.get(&key).await.ok();
                    let holder: Option<LockRecord> =
                        held.as_ref().and_then(|b| serde_json::from_slice(b).ok());
                    match holder {
                        Some(h) if !h.is_stale() => {
                            return Err(StoreError::Busy {
                                what: format!("lock `{name}` in {}", self.url),
                                holder: format!(
                                    "pid {} on {} since {}, lease until {}",
                                    h.pid, h.host, h.acquired, h.expires
                                ),
                                location: format!("{}/{key}", self.url),
                            });
                        }
                        _ => {
                            tracing::warn!(object = %key, "taking over a stale repository lock");
                            for (v, _) in self.versions(&key).await? {
                                self.delete_version(&key, &v).await?;
                            }
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        let (store, k) = (self.clone(), key.clone());
        let refresher = tokio::spawn(async move {
            loop {
                tokio::time::sleep(LOCK_LEASE / 3).await;
                let record = LockRecord::new(acquired);
                let body =
                    Bytes::from(serde_json::to_vec(&record).expect("lock record serialises"));
                if let Err(e) = store.put_mutable(&k, body).await {
                    tracing::warn!(object = %k, error = %e, "unable to refresh the repository lock");
                }
            }
        });
        Ok(Box::new(S3Lock {
            store: self.clone(),
            key,
            refresher,
            released: false,
        }))
    }
}

/// What `repo init` and `doctor` need to know about the bucket itself.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BucketState {
    pub exists: bool,
    /// `Enabled`, `Suspended`, or `None` when never enabled.
    pub versioning: Option<String>,
    pub object_lock: bool,
    /// The bucket's default retention, e.g. `COMPLIANCE 30 days`, if any.
    pub default_retention: Option<String>,
}

impl S3Store {
    pub async fn bucket_state(&self) -> Result<BucketState, StoreError> {
        let bucket = &self.config.bucket;
        match self.client.head_bucket().bucket(bucket).send().await {
            Ok(_) => {}
            Err(e) => {
                let f = failure(&e);
                if f.status == Some(404) || f.code == "NoSuchBucket" || f.code == "NotFound" {
                    return Ok(BucketState {
                        exists: false,
                        versioning: None,
                        object_lock: false,
                        default_retention: None,
                    });
                }
                return Err(self.failure_error("check bucket", "", f));
            }
        }
        let versioning = self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| self.error("read the versioning of", "", e))?
            .status()
            .map(|s| s.as_str().to_string());
        let (object_lock, default_retention) = match self
            .client
            .get_object_lock_configuration()
            .bucket(bucket)
            .send()
            .await
        {
            Ok(out) => {
                let conf = out.object_lock_configuration();
                let enabled = conf
                    .and_then(|c| c.object_lock_enabled())
                    .is_some_and(|e| e.as_str() == "Enabled");
                let default = conf
                    .and_then(|c| c.rule())
                    .and_then(|r| r.default_retention())
                    .map(|d| {
                        format!(
                            "{} {}",
                            d.mode().map(|m| m.as_str()).unwrap_or("?"),
                            match (d.days(), d.years()) {
                                (Some(days), _) => format!("{days} days"),
                                (_, Some(years)) => format!("{years} years"),
                                _ => "?".into(),
                            }
                        )
                    });
                (enabled, default)
            }
            Err(e) => {
                let f = failure(&e);
                if f.status == Some(404) || f.code.contains("ObjectLockConfiguration") {
                    (false, None)
                } else {
                    return Err(self.failure_error("read the object lock configuration of", "", f));
                }
            }
        };
        Ok(BucketState {
            exists: true,
            versioning,
            object_lock,
            default_retention,
        })
    }

    /// Creates the bucket, with Object Lock (which also turns versioning on)
    /// unless `object_lock` is false.
    pub async fn create_bucket(&self, object_lock: bool) -> Result<(), StoreError> {
        let mut req = self
            .client
            .create_bucket()
            .bucket(&self.config.bucket)
            .object_lock_enabled_for_bucket(object_lock);
        if let Some(region) = self.client.config().region() {
            if region.as_ref() != "us-east-1" {
                req = req.create_bucket_configuration(
                    aws_sdk_s3::types::CreateBucketConfiguration::builder()
                        .location_constraint(aws_sdk_s3::types::BucketLocationConstraint::from(
                            region.as_ref(),
                        ))
                        .build(),
                );
            }
        }
        req.send()
            .await
            .map_err(|e| self.error("create bucket", &self.config.bucket.clone(), e))?;
        Ok(())
    }

    pub async fn enable_versioning(&self) -> Result<(), StoreError> {
        self.client
            .put_bucket_versioning()
            .bucket(&self.config.bucket)
            .versioning_configuration(
                aws_sdk_s3::types::VersioningConfiguration::builder()
                    .status(aws_sdk_s3::types::BucketVersioningStatus::Enabled)
                    .build(),
            )
            .send()
            .await
            .map_err(|e| self.error("enable versioning on", "", e))?;
        Ok(())
    }
}
