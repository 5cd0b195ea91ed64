//! S3 multipart uploads that were never completed nor aborted: `ListMultipartUploads` and
//! `AbortMultipartUpload`, which OpenDAL does not expose, sent as [`SignedS3`] requests.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use hitkeep_config::S3Location;
use http::Method;
use opendal::raw::{QueryPairsWriter, percent_encode_path};
use serde::Deserialize;

use super::{PartialKind, PartialUpload, SweepReport};
use crate::error::{Error, ErrorKind, Result, Service};
use crate::s3api::{SignedS3, server_time};

const LIST: &str = "list uploads";
const ABORT: &str = "abort upload";

/// The uploads of one S3 location.
pub(crate) struct Uploads {
    api: Arc<SignedS3>,
    /// The location's prefix with a trailing `/`; `""` for a whole bucket.
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    location: String,
    service: Service,
}

impl fmt::Debug for Uploads {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uploads")
            .field("api", &self.api)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Where a page of a listing starts: after this key and upload id.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Marker {
    key: String,
    upload_id: String,
}

/// One page of `ListMultipartUploads`, with the server's time when it answered.
struct Page {
    uploads: Vec<Listed>,
    next: Option<Marker>,
    now: Option<jiff::Timestamp>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct ListResult {
    is_truncated: bool,
    next_key_marker: String,
    next_upload_id_marker: String,
    #[serde(rename = "Upload")]
    uploads: Vec<Listed>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct Listed {
    key: String,
    upload_id: String,
    initiated: String,
}

impl Uploads {
    /// The uploads of `location`, reached through `api`.
    pub(crate) fn new(location: &S3Location, api: Arc<SignedS3>, service: &Service) -> Uploads {
        let prefix = match location.prefix() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        Uploads {
            api,
            prefix,
            location: format!("s3://{}/{}", location.bucket(), location.prefix()),
            service: service.clone(),
        }
    }

    /// Aborts the uploads under the prefix that the server says were initiated more than
    /// `older_than` ago.
    pub(crate) async fn sweep(&self, older_than: Duration) -> Result<SweepReport> {
        let mut report = SweepReport::default();
        let mut after: Option<Marker> = None;
        loop {
            let page = self.list(after.as_ref()).await?;
            if page.now.is_none() && !page.uploads.is_empty() {
                tracing::warn!(service = %self.service.name, "the S3 service sent no Date header, so the age of its multipart uploads is unknown; none is aborted");
            }
            for listed in page.uploads {
                self.consider(listed, page.now, older_than, &mut report)
                    .await;
            }
            match page.next {
                // A server that does not move on would be asked the same page forever.
                Some(next) if after.as_ref() != Some(&next) => after = Some(next),
                _ => return Ok(report),
            }
        }
    }

    async fn consider(
        &self,
        listed: Listed,
        now: Option<jiff::Timestamp>,
        older_than: Duration,
        report: &mut SweepReport,
    ) {
        // The prefix was asked for; a server that ignores it must not lead us out of the location.
        let Some(key) = listed.key.strip_prefix(&self.prefix) else {
            return;
        };
        let started = listed.initiated.parse::<jiff::Timestamp>().ok();
        let upload = PartialUpload {
            key: key.to_owned(),
            kind: PartialKind::Multipart {
                upload_id: listed.upload_id.clone(),
            },
            bytes: None,
            started,
        };
        if !older(started, now, older_than) {
            report.kept += 1;
            return;
        }
        match self.abort(&listed.key, &listed.upload_id).await {
            Ok(()) => report.removed.push(upload),
            // Completed or aborted by someone else since the listing.
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => report.failed.push((upload, e)),
        }
    }

    async fn list(&self, after: Option<&Marker>) -> Result<Page> {
        let mut url = QueryPairsWriter::new(self.api.endpoint()).push("uploads", "");
        if !self.prefix.is_empty() {
            url = url.push("prefix", &percent_encode_path(&self.prefix));
        }
        if let Some(m) = after {
            url = url
                .push("key-marker", &percent_encode_path(&m.key))
                .push("upload-id-marker", &percent_encode_path(&m.upload_id));
        }
        let response = self
            .api
            .send(Method::GET, &url.finish())
            .await
            .map_err(|e| self.err(e, LIST, ""))?;
        let now = server_time(&response);
        let body = response.into_body().to_bytes();
        let text = String::from_utf8_lossy(&body);
        // A service that ignores `?uploads` answers with an object listing, which has no uploads in it.
        if !text.contains("<ListMultipartUploadsResult") {
            return Err(self.unsupported("it answered with something else"));
        }
        let result: ListResult = quick_xml::de::from_str(&text).map_err(|e| {
            Error::new(
                ErrorKind::Other,
                LIST,
                self.location.clone(),
                format!(
                    "{} sent a listing that does not parse: {e}",
                    self.service.name
                ),
            )
        })?;
        Ok(Page {
            next: next_marker(&result),
            uploads: result.uploads,
            now,
        })
    }

    async fn abort(&self, key: &str, upload_id: &str) -> Result<()> {
        let url = QueryPairsWriter::new(&self.api.object_url(key))
            .push("uploadId", &percent_encode_path(upload_id))
            .finish();
        let relative = key.strip_prefix(&self.prefix).unwrap_or(key);
        self.api
            .send(Method::DELETE, &url)
            .await
            .map(drop)
            .map_err(|e| self.err(e, ABORT, relative))
    }

    fn err(&self, e: opendal::Error, operation: &'static str, key: &str) -> Error {
        if e.kind() == opendal::ErrorKind::Unsupported {
            return self.unsupported(&e.to_string());
        }
        let target = self.describe(key);
        let error = Error::from_opendal(e, operation, target, &self.service);
        match error.kind() {
            ErrorKind::AccessDenied => error.with_hint(
                "the key may lack s3:ListBucketMultipartUploads or s3:AbortMultipartUpload on the bucket: allow them, or add the lifecycle rule `hitkeep backup lifecycle` prints, which aborts such uploads itself",
            ),
            _ => error,
        }
    }

    fn unsupported(&self, why: &str) -> Error {
        Error::new(
            ErrorKind::Unsupported,
            LIST,
            self.location.clone(),
            format!("{} does not list multipart uploads ({why})", self.service.name),
        )
        .with_hint("partial uploads a killed process left cannot be found here; add the lifecycle rule `hitkeep backup lifecycle` prints, whose AbortIncompleteMultipartUpload removes them")
    }

    fn describe(&self, key: &str) -> String {
        match key {
            "" => self.location.clone(),
            key => format!("{}/{key}", self.location.trim_end_matches('/')),
        }
    }
}

/// Whether an upload `started` is more than `older_than` older than the server's `now`. Unknown times
/// are never old: an upload is aborted only on the server's own word.
fn older(
    started: Option<jiff::Timestamp>,
    now: Option<jiff::Timestamp>,
    older_than: Duration,
) -> bool {
    let (Some(started), Some(now)) = (started, now) else {
        return false;
    };
    jiff::SignedDuration::try_from(older_than)
        .is_ok_and(|bound| now.duration_since(started) > bound)
}

/// Where the next page starts, when the listing is truncated: the server's markers, or the last
/// upload listed where a server leaves them out.
fn next_marker(result: &ListResult) -> Option<Marker> {
    if !result.is_truncated {
        return None;
    }
    let last = result.uploads.last();
    let pick = |given: &str, last: Option<&str>| match given {
        "" => last.unwrap_or_default().to_owned(),
        given => given.to_owned(),
    };
    Some(Marker {
        key: pick(&result.next_key_marker, last.map(|u| u.key.as_str())),
        upload_id: pick(
            &result.next_upload_id_marker,
            last.map(|u| u.upload_id.as_str()),
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AWS's documented example answer, trimmed.
    const AWS_PAGE: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListMultipartUploadsResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Bucket>bucket</Bucket>
  <KeyMarker></KeyMarker>
  <UploadIdMarker></UploadIdMarker>
  <NextKeyMarker>my-movie.m2ts</NextKeyMarker>
  <NextUploadIdMarker>YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ</NextUploadIdMarker>
  <MaxUploads>3</MaxUploads>
  <IsTruncated>true</IsTruncated>
  <Upload>
    <Key>my-divisor</Key>
    <UploadId>XMgbGlrZSBlbHZpbmcncyBub3QgaGF2aW5nIG11Y2ggbHVjaw</UploadId>
    <Initiator><ID>arn:aws:iam::111122223333:user/user1-11111a31-17b5-4fb7-9df5-b111111f13de</ID><DisplayName>user1-11111a31-17b5-4fb7-9df5-b111111f13de</DisplayName></Initiator>
    <Owner><ID>75aa57f09aa0c8caeab4f8c24e99d10f8e7faeebf76c078efc7c6caea54ba06a</ID><DisplayName>OwnerDisplayName</DisplayName></Owner>
    <StorageClass>STANDARD</StorageClass>
    <Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
  <Upload>
    <Key>my-movie.m2ts</Key>
    <UploadId>VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA</UploadId>
    <StorageClass>STANDARD</StorageClass>
    <Initiated>2010-11-10T20:48:33.000Z</Initiated>
  </Upload>
</ListMultipartUploadsResult>"#;

    #[test]
    fn an_aws_page_parses_with_its_markers() {
        let result: ListResult = quick_xml::de::from_str(AWS_PAGE).unwrap();
        assert_eq!(result.uploads.len(), 2);
        assert_eq!(result.uploads[0].key, "my-divisor");
        assert_eq!(
            result.uploads[1].upload_id,
            "VXBsb2FkIElEIGZvciBlbHZpbmcncyBteS1tb3ZpZS5tMnRzIHVwbG9hZA"
        );
        let started: jiff::Timestamp = result.uploads[0].initiated.parse().unwrap();
        assert_eq!(started.as_second(), 1_289_422_113);
        assert_eq!(
            next_marker(&result),
            Some(Marker {
                key: "my-movie.m2ts".into(),
                upload_id: "YW55IGlkZWEgd2h5IGVsdmluZydzIHVwbG9hZCBmYWlsZWQ".into(),
            })
        );
        let last: ListResult = quick_xml::de::from_str(
            "<ListMultipartUploadsResult><IsTruncated>false</IsTruncated></ListMultipartUploadsResult>",
        )
        .unwrap();
        assert!(last.uploads.is_empty());
        assert_eq!(next_marker(&last), None);
    }

    /// Age is the server's `Date` against the server's `Initiated`; without either nothing is old.
    #[test]
    fn age_is_judged_by_the_servers_clock_only() {
        let date = jiff::fmt::rfc2822::DateTimeParser::new()
            .parse_timestamp("Wed, 10 Nov 2010 21:48:34 GMT")
            .unwrap();
        let started = "2010-11-10T20:48:33.000Z".parse().ok();
        let hour = Duration::from_secs(3600);
        assert!(older(started, Some(date), hour));
        assert!(!older(started, Some(date), 2 * hour));
        assert!(!older(started, None, Duration::ZERO));
        assert!(!older(None, Some(date), Duration::ZERO));
    }
}
