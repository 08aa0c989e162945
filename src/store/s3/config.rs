//! What a plan says about an S3 repository, and how that becomes an SDK
//! client. Kept apart from the store so plans and tests can build an
//! [`S3Config`] without any request code, and so the client's retry, timeout
//! and checksum choices are read in one place.

use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::Client;

use crate::secret::Secret;
use crate::store::StoreError;

/// Objects larger than this go up as multipart uploads, in parts of this size,
/// and come down as ranged GETs of this size in parallel.
pub const DEFAULT_PART_SIZE: usize = 8 * 1024 * 1024;

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

/// Builds the SDK client for `config`; no request is made until the first call.
pub(super) async fn build_client(config: &S3Config) -> Result<Client, StoreError> {
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
    if config.credentials.is_none() {
        check_credentials(&shared, &config.url()).await?;
    }
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
    Ok(Client::from_conf(builder.build()))
}

/// Resolves the default chain's credentials once, up front: without this a
/// missing key surfaces only at the first request, as a connection failure
/// ("ConnectionFailed … loading credentials") with no hint where keys go.
/// The client resolves them again on its own (cached from then on); from the
/// environment or a profile that costs nothing, from instance metadata one
/// more local request.
async fn check_credentials(shared: &aws_config::SdkConfig, store: &str) -> Result<(), StoreError> {
    use aws_sdk_s3::config::ProvideCredentials;
    let missing = |detail: String| StoreError::NoCredentials {
        store: store.to_string(),
        detail,
        home: std::env::var("HOME").unwrap_or_else(|_| "unset".into()),
    };
    let Some(provider) = shared.credentials_provider() else {
        return Err(missing("no credential provider".into()));
    };
    match provider.provide_credentials().await {
        Ok(_) => Ok(()),
        Err(e) => Err(missing(format!(
            "looked in the environment, ~/.aws, web identity, container and instance metadata; last: {}",
            super::error::error_chain(&e).trim_end_matches('.')
        ))),
    }
}
