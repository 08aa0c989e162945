//! How a failed request is described and mapped onto [`StoreError`]. One
//! place decides what counts as missing, refused, already there or worth
//! retrying, so every call, and `doctor` with its raw SDK calls, reads S3's
//! answers the same way.

use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::S3Store;
use crate::store::StoreError;

/// What a failed request came back with, for messages and decisions.
#[derive(Debug, Clone)]
pub struct Failure {
    pub status: Option<u16>,
    pub code: String,
    pub message: String,
    /// No HTTP answer at all, or an answer worth retrying later.
    pub transient: bool,
    /// Whether `code` is the one S3 sent, not inferred from the status.
    pub coded: bool,
}

impl Failure {
    /// Whether S3 refused the request because an Object Lock forbids it:
    /// deleting a locked version, or shortening (or lifting) its retention.
    /// AWS answers both with 403 `AccessDenied` (its message adds "because
    /// object protected by object lock"); SeaweedFS 4.48 answers both with 403
    /// `AccessDenied`, "Access Denied.", in compliance and governance mode
    /// alike (checked against the server `scripts/s3-server` runs). Any other
    /// answer (a 5xx, `ExpiredToken`, `InvalidRequest`, a malformed request,
    /// no answer at all) says nothing about the lock, so `doctor` and the
    /// tests take it as "could not tell", never as a refusal. A 403 whose
    /// body carries no code is not taken either: the code is what says why.
    pub fn is_lock_refusal(&self) -> bool {
        self.status == Some(403) && self.code == "AccessDenied" && self.coded
    }
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
            let coded = !code.is_empty();
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
                coded,
                message: e.message().unwrap_or("").to_string(),
            }
        }
        SdkError::TimeoutError(_) => Failure {
            status: None,
            code: "Timeout".into(),
            coded: false,
            message: "the request timed out".into(),
            transient: true,
        },
        SdkError::DispatchFailure(d) => Failure {
            status: None,
            code: "ConnectionFailed".into(),
            coded: false,
            message: d
                .as_connector_error()
                .map(|c| error_chain(c))
                .unwrap_or_else(|| format!("{d:?}")),
            transient: true,
        },
        SdkError::ResponseError(r) => Failure {
            status: None,
            code: "BadResponse".into(),
            coded: false,
            message: format!("{r:?}"),
            transient: true,
        },
        other => Failure {
            status: None,
            code: "RequestFailed".into(),
            coded: false,
            message: error_chain(other),
            transient: false,
        },
    }
}

pub(super) fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
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

impl S3Store {
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

    pub(super) fn failure_error(&self, op: &'static str, key: &str, f: Failure) -> StoreError {
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

    pub(super) fn integrity_error(&self, op: &'static str, key: &str, what: String) -> StoreError {
        StoreError::Io {
            op,
            store: self.url.clone(),
            key: key.to_string(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, what),
        }
    }
}
