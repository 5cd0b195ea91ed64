//! ListMultipartUploads for s3s-fs, which does not implement it, answered from s3s-fs's own records
//! of the uploads it has open, so that a client's real request path (signing, query, XML, pages) is
//! what a test exercises.
//!
//! s3s-fs keeps in its root, for every open upload, `.upload-{id}.json` (removed by complete and
//! abort; its modification time is when the upload was initiated) and
//! `.bucket-{b64 bucket}.object-{b64 key}.upload-{id}.metadata.json` (base64 URL-safe without
//! padding), which names its bucket and key.
//!
//! A PUT with `If-None-Match: *` is made atomic, as AWS S3, R2 and MinIO make it: s3s-fs checks that
//! the key is free and then writes, so two such PUTs at once could both succeed (a flaky
//! `two_cycles_started_together_claim_different_ids`: both cycles held the id, and the commit-time
//! check refused one). Every other request goes to s3s-fs unchanged.

use std::io;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use s3s::dto::*;
use s3s::{S3, S3Request, S3Response, S3Result, s3_error};
use s3s_fs::FileSystem;

/// s3s-fs, with ListMultipartUploads.
pub(crate) struct WithUploads {
    pub fs: FileSystem,
    pub root: PathBuf,
    /// Answer ListMultipartUploads with 501 NotImplemented, as s3s-fs alone does.
    pub refuse: bool,
    /// The most uploads one page holds, whatever the client asks.
    pub page: Option<usize>,
    /// Held by every conditional PUT, from its check to its write.
    pub conditional: tokio::sync::Mutex<()>,
}

/// An upload s3s-fs has open.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct OpenUpload {
    pub key: String,
    pub upload_id: String,
    pub initiated: SystemTime,
}

/// The uploads s3s-fs under `root` has open in `bucket`, sorted by key, then upload id.
pub(crate) fn open_uploads(root: &Path, bucket: &str) -> io::Result<Vec<OpenUpload>> {
    let mut uploads = Vec::new();
    for entry in std::fs::read_dir(root)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        let Some((of_bucket, key, upload_id)) = parse_record(&name) else {
            continue;
        };
        let Ok(meta) = std::fs::metadata(root.join(format!(".upload-{upload_id}.json"))) else {
            continue; // completed or aborted while we looked
        };
        if of_bucket == bucket {
            uploads.push(OpenUpload {
                key,
                upload_id,
                initiated: meta.modified()?,
            });
        }
    }
    uploads.sort_by(|a, b| (&a.key, &a.upload_id).cmp(&(&b.key, &b.upload_id)));
    Ok(uploads)
}

/// `(bucket, key, upload id)` from `.bucket-{b64}.object-{b64}.upload-{id}.metadata.json`. The base64
/// alphabet has no `.`, so the separators cannot occur inside the names.
fn parse_record(name: &str) -> Option<(String, String, String)> {
    let rest = name
        .strip_prefix(".bucket-")?
        .strip_suffix(".metadata.json")?;
    let (bucket, rest) = rest.split_once(".object-")?;
    let (key, upload_id) = rest.split_once(".upload-")?;
    let decode = |s: &str| {
        let bytes = base64_simd::URL_SAFE_NO_PAD.decode_to_vec(s).ok()?;
        String::from_utf8(bytes).ok()
    };
    Some((decode(bucket)?, decode(key)?, upload_id.to_owned()))
}

impl WithUploads {
    async fn list_uploads(
        &self,
        req: S3Request<ListMultipartUploadsInput>,
    ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
        if self.refuse {
            return Err(s3_error!(
                NotImplemented,
                "ListMultipartUploads is not implemented yet"
            ));
        }
        let input = req.input;
        let bucket_dir = self.root.join(&input.bucket);
        if !bucket_dir.is_dir() {
            return Err(s3_error!(NoSuchBucket));
        }
        let mut uploads = open_uploads(&self.root, &input.bucket)
            .map_err(|e| s3_error!(InternalError, "reading the uploads: {e}"))?;
        let prefix = input.prefix.clone().unwrap_or_default();
        uploads.retain(|u| u.key.starts_with(&prefix));
        if let Some(key_marker) = &input.key_marker {
            // After the key; with an upload id marker, after that upload of the key too.
            uploads.retain(|u| match &input.upload_id_marker {
                Some(id) => (&u.key, &u.upload_id) > (key_marker, id),
                None => &u.key > key_marker,
            });
        }
        let asked = usize::try_from(input.max_uploads.unwrap_or(1000)).unwrap_or(1000);
        let max = self.page.map_or(asked, |page| page.min(asked)).max(1);
        let is_truncated = uploads.len() > max;
        uploads.truncate(max);
        let last = uploads.last().cloned();
        let output = ListMultipartUploadsOutput {
            bucket: Some(input.bucket),
            prefix: input.prefix,
            key_marker: input.key_marker,
            upload_id_marker: input.upload_id_marker,
            max_uploads: i32::try_from(max).ok(),
            is_truncated: Some(is_truncated),
            next_key_marker: last.as_ref().map(|u| u.key.clone()),
            next_upload_id_marker: last.map(|u| u.upload_id),
            uploads: Some(
                uploads
                    .into_iter()
                    .map(|u| MultipartUpload {
                        key: Some(u.key),
                        upload_id: Some(u.upload_id),
                        initiated: Some(Timestamp::from(u.initiated)),
                        ..MultipartUpload::default()
                    })
                    .collect(),
            ),
            ..ListMultipartUploadsOutput::default()
        };
        Ok(S3Response::new(output))
    }
}

/// Every request s3s-fs implements goes to it unchanged.
macro_rules! to_s3s_fs {
    ($($op:ident: $input:ident => $output:ident),* $(,)?) => {
        #[async_trait::async_trait]
        impl S3 for WithUploads {
            $(
                async fn $op(&self, req: S3Request<$input>) -> S3Result<S3Response<$output>> {
                    self.fs.$op(req).await
                }
            )*

            async fn list_multipart_uploads(
                &self,
                req: S3Request<ListMultipartUploadsInput>,
            ) -> S3Result<S3Response<ListMultipartUploadsOutput>> {
                self.list_uploads(req).await
            }

            async fn put_object(
                &self,
                req: S3Request<PutObjectInput>,
            ) -> S3Result<S3Response<PutObjectOutput>> {
                let _atomic = match req.input.if_none_match {
                    Some(_) => Some(self.conditional.lock().await),
                    None => None,
                };
                self.fs.put_object(req).await
            }
        }
    };
}

to_s3s_fs!(
    create_bucket: CreateBucketInput => CreateBucketOutput,
    copy_object: CopyObjectInput => CopyObjectOutput,
    delete_bucket: DeleteBucketInput => DeleteBucketOutput,
    delete_object: DeleteObjectInput => DeleteObjectOutput,
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput,
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput,
    get_object: GetObjectInput => GetObjectOutput,
    head_bucket: HeadBucketInput => HeadBucketOutput,
    head_object: HeadObjectInput => HeadObjectOutput,
    list_buckets: ListBucketsInput => ListBucketsOutput,
    list_objects: ListObjectsInput => ListObjectsOutput,
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output,
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput,
    upload_part: UploadPartInput => UploadPartOutput,
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput,
    list_parts: ListPartsInput => ListPartsOutput,
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput,
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s3s_fs_upload_records_are_read() {
        let encode = |s: &str| base64_simd::URL_SAFE_NO_PAD.encode_to_string(s);
        let name = format!(
            ".bucket-{}.object-{}.upload-0b7a5a52-8f1e-4c55-a6bb-0c7e1f0c9b11.metadata.json",
            encode("hitkeep-test"),
            encode("backups/shared/2026-03-08T120000Z/hits.parquet")
        );
        assert_eq!(
            parse_record(&name),
            Some((
                "hitkeep-test".to_owned(),
                "backups/shared/2026-03-08T120000Z/hits.parquet".to_owned(),
                "0b7a5a52-8f1e-4c55-a6bb-0c7e1f0c9b11".to_owned()
            ))
        );
        // An object's own metadata (no upload) and other files are not uploads.
        assert_eq!(
            parse_record(&format!(
                ".bucket-{}.object-{}.metadata.json",
                encode("b"),
                encode("k")
            )),
            None
        );
        assert_eq!(parse_record(".upload-0b7a5a52.json"), None);
    }
}
