//! S3 multipart uploads that were never completed nor aborted: `ListMultipartUploads` and
//! `AbortMultipartUpload`, which OpenDAL does not expose. They are signed as OpenDAL signs (reqsign,
//! with the location's credentials, region and URL style) and sent through the location's own HTTP
//! transport, with the same timeout and retries.

use std::fmt;
use std::time::Duration;

use backon::{ExponentialBuilder, Retryable as _};
use hitkeep_config::{Credentials, S3Location, S3Settings, UrlStyle};
use http::{Method, Request, Response, StatusCode, header};
use opendal::raw::{QueryPairsWriter, percent_encode_path};
use opendal::{Buffer, HttpTransporter, Operator};
use reqsign_aws_v4::{
    Credential, DefaultCredentialProvider, RequestSigner, StaticCredentialProvider,
};
use reqsign_core::{Context, OsEnv, Signer};
use reqsign_file_read_tokio::TokioFileRead;
use serde::Deserialize;

use super::{PartialKind, PartialUpload, SweepReport};
use crate::backend::StorageOptions;
use crate::error::{Error, ErrorKind, Result, Service};

const LIST: &str = "list uploads";
const ABORT: &str = "abort upload";

/// The uploads of one S3 location.
pub(crate) struct Uploads {
    transport: HttpTransporter,
    signer: Signer<Credential>,
    /// `http://host:port/bucket` (path style) or `https://bucket.host` (virtual host), as OpenDAL
    /// builds it.
    endpoint: String,
    /// The location's prefix with a trailing `/`; `""` for a whole bucket.
    prefix: String,
    /// `s3://bucket/prefix`, for messages.
    location: String,
    options: StorageOptions,
    service: Service,
}

impl fmt::Debug for Uploads {
    /// No signer here: it holds the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uploads")
            .field("endpoint", &self.endpoint)
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

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct S3Error {
    code: String,
    message: String,
}

impl Uploads {
    /// The uploads of `location`, reached as the operator `plain` reaches it.
    pub(crate) fn new(
        location: &S3Location,
        s3: &S3Settings,
        plain: &Operator,
        options: &StorageOptions,
        service: &Service,
    ) -> Uploads {
        let transport = plain.context().http_transport().clone();
        let prefix = match location.prefix() {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let endpoint = s3.endpoint_url().unwrap_or_else(|| {
            let scheme = if s3.use_ssl { "https" } else { "http" };
            format!("{scheme}://s3.{}.amazonaws.com", s3.region)
        });
        Uploads {
            signer: signer(s3, &transport),
            transport,
            endpoint: bucket_endpoint(&endpoint, location.bucket(), &s3.region, s3.url_style),
            prefix,
            location: format!("s3://{}/{}", location.bucket(), location.prefix()),
            options: options.clone(),
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
        let mut url = QueryPairsWriter::new(&self.endpoint).push("uploads", "");
        if !self.prefix.is_empty() {
            url = url.push("prefix", &percent_encode_path(&self.prefix));
        }
        if let Some(m) = after {
            url = url
                .push("key-marker", &percent_encode_path(&m.key))
                .push("upload-id-marker", &percent_encode_path(&m.upload_id));
        }
        let response = self
            .send(Method::GET, &url.finish())
            .await
            .map_err(|e| self.err(e, LIST, ""))?;
        let now = response
            .headers()
            .get(header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                jiff::fmt::rfc2822::DateTimeParser::new()
                    .parse_timestamp(v)
                    .ok()
            });
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
        let url = QueryPairsWriter::new(&format!("{}/{}", self.endpoint, percent_encode_path(key)))
            .push("uploadId", &percent_encode_path(upload_id))
            .finish();
        let relative = key.strip_prefix(&self.prefix).unwrap_or(key);
        self.send(Method::DELETE, &url)
            .await
            .map(drop)
            .map_err(|e| self.err(e, ABORT, relative))
    }

    /// Sends a request, signed afresh for each attempt; retried with backoff on what OpenDAL's retry
    /// layer retries (network trouble, throttling, server errors), each attempt under the timeout.
    async fn send(&self, method: Method, url: &str) -> opendal::Result<Response<Buffer>> {
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_max_times(self.options.retries);
        (|| self.attempt(method.clone(), url))
            .retry(backoff)
            .when(opendal::Error::is_temporary)
            .notify(|e, retry_in| {
                tracing::warn!(operation = %method, retry_in = ?retry_in, error = %e, "storage request failed, retrying");
            })
            .await
    }

    async fn attempt(&self, method: Method, url: &str) -> opendal::Result<Response<Buffer>> {
        let request = self.signed(method, url).await?;
        let response = tokio::time::timeout(self.options.timeout, self.transport.send(request))
            .await
            .map_err(|_| {
                opendal::Error::new(opendal::ErrorKind::Unexpected, "operation timeout reached")
                    .set_temporary()
            })??;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(status_error(
            response.status(),
            &response.into_body().to_bytes(),
        ))
    }

    async fn signed(&self, method: Method, url: &str) -> opendal::Result<Request<Buffer>> {
        let request = Request::builder()
            .method(method)
            .uri(url)
            .body(Buffer::new())
            .map_err(opendal::raw::new_request_build_error)?;
        let (mut parts, body) = request.into_parts();
        self.signer.sign(&mut parts, None).await.map_err(|e| {
            let temporary = e.is_retryable();
            let e = opendal::Error::new(opendal::ErrorKind::Unexpected, "signing http request")
                .set_source(e);
            if temporary { e.set_temporary() } else { e }
        })?;
        // As OpenDAL does: the HTTP client sets Host itself.
        parts.headers.remove(header::HOST);
        Ok(Request::from_parts(parts, body))
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

/// A refused request as OpenDAL's S3 service reports one: the kind and retry judgement by status, the
/// message by the service's error code and words. Providers that do not implement a request answer
/// 501 NotImplemented (or 405), which becomes `Unsupported`.
fn status_error(status: StatusCode, body: &[u8]) -> opendal::Error {
    let parsed: S3Error =
        quick_xml::de::from_str(&String::from_utf8_lossy(body)).unwrap_or_default();
    let (kind, temporary) = match status.as_u16() {
        _ if parsed.code == "NotImplemented" => (opendal::ErrorKind::Unsupported, false),
        501 | 405 => (opendal::ErrorKind::Unsupported, false),
        403 => (opendal::ErrorKind::PermissionDenied, false),
        404 => (opendal::ErrorKind::NotFound, false),
        429 => (opendal::ErrorKind::RateLimited, true),
        499 | 500 | 502 | 503 | 504 => (opendal::ErrorKind::Unexpected, true),
        _ => (opendal::ErrorKind::Unexpected, false),
    };
    let message = match (parsed.code.as_str(), parsed.message.as_str()) {
        ("", _) => format!("{status}"),
        (code, "") => format!("{} {code}", status.as_u16()),
        (code, message) => format!("{} {code}: {message}", status.as_u16()),
    };
    let e = opendal::Error::new(kind, message);
    if temporary { e.set_temporary() } else { e }
}

/// The request signer OpenDAL builds for these settings: static keys (with a session token) alone, or
/// the AWS credential chain.
fn signer(s3: &S3Settings, transport: &HttpTransporter) -> Signer<Credential> {
    let context = Context::new()
        .with_file_read(TokioFileRead)
        .with_http_send(transport.clone())
        .with_env(OsEnv);
    let request_signer = RequestSigner::new("s3", &s3.region);
    match &s3.credentials {
        Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let mut keys =
                StaticCredentialProvider::new(access_key_id.expose(), secret_access_key.expose());
            if let Some(token) = session_token {
                keys = keys.with_session_token(token.expose());
            }
            Signer::new(context, keys, request_signer)
        }
        Credentials::Chain => {
            Signer::new(context, DefaultCredentialProvider::new(), request_signer)
        }
    }
}

/// The bucket's base URL, built as OpenDAL's S3 service builds it: a scheme when missing, no bucket in
/// the host, default ports and trailing `/` dropped, AWS's global endpoint made regional, then the
/// bucket in the host (virtual host) or the path.
fn bucket_endpoint(endpoint: &str, bucket: &str, region: &str, style: UrlStyle) -> String {
    let mut endpoint = match endpoint.starts_with("http") {
        true => endpoint.to_owned(),
        false => format!("https://{endpoint}"),
    };
    endpoint = endpoint.replace(&format!("//{bucket}."), "//");
    if let Ok(url) = url::Url::parse(&endpoint) {
        endpoint = url.to_string().trim_end_matches('/').to_owned();
    }
    if endpoint == "https://s3.amazonaws.com" {
        endpoint = format!("https://s3.{region}.amazonaws.com");
    }
    match style {
        UrlStyle::VirtualHost => endpoint.replacen("//", &format!("//{bucket}."), 1),
        UrlStyle::Path => format!("{endpoint}/{bucket}"),
    }
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

    #[test]
    fn refusals_are_classified_like_opendals() {
        let not_implemented = status_error(
            StatusCode::NOT_IMPLEMENTED,
            b"<Error><Code>NotImplemented</Code><Message>ListMultipartUploads is not implemented yet</Message></Error>",
        );
        assert_eq!(not_implemented.kind(), opendal::ErrorKind::Unsupported);
        let denied = status_error(
            StatusCode::FORBIDDEN,
            b"<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>",
        );
        assert_eq!(denied.kind(), opendal::ErrorKind::PermissionDenied);
        assert!(
            denied
                .to_string()
                .contains("403 AccessDenied: Access Denied"),
            "{denied}"
        );
        assert!(!denied.is_temporary());
        let slow = status_error(
            StatusCode::SERVICE_UNAVAILABLE,
            b"<Error><Code>SlowDown</Code></Error>",
        );
        assert!(slow.is_temporary());
        assert_eq!(
            status_error(StatusCode::NOT_FOUND, b"").kind(),
            opendal::ErrorKind::NotFound
        );
    }

    #[test]
    fn bucket_urls_are_built_as_opendal_builds_them() {
        let path = |e| bucket_endpoint(e, "b", "eu-central-1", UrlStyle::Path);
        let host = |e| bucket_endpoint(e, "b", "eu-central-1", UrlStyle::VirtualHost);
        assert_eq!(path("http://127.0.0.1:9000"), "http://127.0.0.1:9000/b");
        assert_eq!(path("https://minio.lan:443/"), "https://minio.lan/b");
        assert_eq!(
            host("https://s3.amazonaws.com"),
            "https://b.s3.eu-central-1.amazonaws.com"
        );
        assert_eq!(
            host("https://b.s3.eu-west-1.amazonaws.com"),
            "https://b.s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(host("r2.example.com"), "https://b.r2.example.com");
    }
}
