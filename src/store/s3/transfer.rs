//! Moving bytes: create-only puts, single or as parallel multipart uploads,
//! and reads, as one GET or as parallel ranged GETs. Apart from the store
//! contract because an object's size picks the path, and the large paths
//! carry their own failure handling: aborting a half-done upload, and
//! telling a short object from a short read.

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use sha2::{Digest, Sha256};

use super::error::{error_chain, Failure};
use super::retention::{aws_time, lock_mode};
use super::S3Store;
use crate::store::{PutOptions, Store, StoreError};

pub(super) fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl S3Store {
    async fn exists(&self, key: &str) -> Result<bool, StoreError> {
        match self.head(key).await {
            Ok(_) => Ok(true),
            Err(StoreError::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    pub(super) async fn put_single(
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

    pub(super) async fn put_multipart(
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
    pub(super) async fn get_one(
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
                        coded: false,
                    },
                )
            })?
            .into_bytes();
        let total = total.unwrap_or(body.len() as u64);
        Ok((body, total))
    }

    /// Reads `start..end`, splitting it into parallel ranged GETs; fails with
    /// `Truncated` when the object ends early.
    pub(super) async fn get_span(
        &self,
        key: &str,
        start: u64,
        end: u64,
    ) -> Result<Bytes, StoreError> {
        let part = self.config.part_size as u64;
        let first_end = end.min(start.saturating_add(part));
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
        // Bounded concurrency: at most `parallel_reads` parts in flight, so a
        // big object costs that many part buffers of waiting, not one task
        // per part at once.
        let in_flight = self.capabilities().parallel_reads.max(1);
        let mut tasks = tokio::task::JoinSet::new();
        let mut offset = first_end;
        let mut index = 0usize;
        let mut pieces = vec![first];
        loop {
            while offset < end && tasks.len() < in_flight {
                let stop = end.min(offset.saturating_add(part));
                let this = self.clone();
                let key = key.to_string();
                index += 1;
                let i = index;
                pieces.push(Bytes::new());
                tasks.spawn(async move {
                    this.get_one(&key, Some((offset, stop)))
                        .await
                        .map(|(b, _)| (i, b, stop - offset))
                });
                offset = stop;
            }
            let Some(done) = tasks.join_next().await else {
                break;
            };
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
}
