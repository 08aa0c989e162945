//! Bucket-level calls the [`Store`](crate::store::Store) trait does not
//! carry: `repo init` creates and configures the bucket, `doctor` reads its
//! versioning and Object Lock state. Apart from the store because they act on
//! the bucket itself, not on keys under the repository's prefix.

use super::error::failure;
use super::S3Store;
use crate::store::StoreError;

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
                return Err(self.failure_error("check", "the bucket", f));
            }
        }
        let versioning = self
            .client
            .get_bucket_versioning()
            .bucket(bucket)
            .send()
            .await
            .map_err(|e| self.error("read the versioning of", "the bucket", e))?
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
                    return Err(self.failure_error(
                        "read the object lock configuration of",
                        "the bucket",
                        f,
                    ));
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
            .map_err(|e| self.error("enable versioning on", "the bucket", e))?;
        Ok(())
    }
}
