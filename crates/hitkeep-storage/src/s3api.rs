//! Signed S3 requests that OpenDAL does not expose (multipart listings, Object Lock): signed as
//! OpenDAL signs (reqsign, with the location's credentials, region and URL style) and sent through the
//! location's own HTTP transport, with the same timeout and retries.

use std::fmt;

use backon::{ExponentialBuilder, Retryable as _};
use hitkeep_config::{Credentials, S3Settings, UrlStyle};
use http::{HeaderMap, Method, Request, Response, StatusCode, header};
use opendal::{Buffer, HttpTransporter, Operator};
use reqsign_aws_v4::{
    Credential, DefaultCredentialProvider, RequestSigner, StaticCredentialProvider,
};
use reqsign_core::{Context, OsEnv, Signer};
use reqsign_file_read_tokio::TokioFileRead;
use serde::Deserialize;

use crate::backend::StorageOptions;

/// One bucket, reached as the location's OpenDAL operator reaches it.
pub(crate) struct SignedS3 {
    transport: HttpTransporter,
    signer: Signer<Credential>,
    /// `http://host:port/bucket` (path style) or `https://bucket.host` (virtual host), as OpenDAL
    /// builds it.
    endpoint: String,
    options: StorageOptions,
}

impl fmt::Debug for SignedS3 {
    /// No signer here: it holds the credentials.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SignedS3")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct S3Error {
    code: String,
    message: String,
}

impl SignedS3 {
    /// `bucket`, reached as the operator `plain` reaches it.
    pub(crate) fn new(
        bucket: &str,
        s3: &S3Settings,
        plain: &Operator,
        options: &StorageOptions,
    ) -> SignedS3 {
        let transport = plain.context().http_transport().clone();
        let endpoint = s3.endpoint_url().unwrap_or_else(|| {
            let scheme = if s3.use_ssl { "https" } else { "http" };
            format!("{scheme}://s3.{}.amazonaws.com", s3.region)
        });
        SignedS3 {
            signer: signer(s3, &transport),
            transport,
            endpoint: bucket_endpoint(&endpoint, bucket, &s3.region, s3.url_style),
            options: options.clone(),
        }
    }

    /// The bucket's base URL, without a trailing `/`.
    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The URL of the object at `full_key` (the bucket's key, the location's prefix included).
    pub(crate) fn object_url(&self, full_key: &str) -> String {
        format!(
            "{}/{}",
            self.endpoint,
            opendal::raw::percent_encode_path(full_key)
        )
    }

    /// Sends a request with no body and no headers of ours.
    pub(crate) async fn send(
        &self,
        method: Method,
        url: &str,
    ) -> opendal::Result<Response<Buffer>> {
        self.send_with(method, url, HeaderMap::new(), Buffer::new())
            .await
    }

    /// Sends a request, signed afresh for each attempt; retried with backoff on what OpenDAL's retry
    /// layer retries (network trouble, throttling, server errors), each attempt under the timeout.
    pub(crate) async fn send_with(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Buffer,
    ) -> opendal::Result<Response<Buffer>> {
        let backoff = ExponentialBuilder::default()
            .with_jitter()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_max_times(self.options.retries);
        (|| self.attempt(method.clone(), url, headers.clone(), body.clone()))
            .retry(backoff)
            .when(opendal::Error::is_temporary)
            .notify(|e, retry_in| {
                tracing::warn!(operation = %method, retry_in = ?retry_in, error = %e, "storage request failed, retrying");
            })
            .await
    }

    async fn attempt(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Buffer,
    ) -> opendal::Result<Response<Buffer>> {
        let request = self.signed(method, url, headers, body).await?;
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

    async fn signed(
        &self,
        method: Method,
        url: &str,
        headers: HeaderMap,
        body: Buffer,
    ) -> opendal::Result<Request<Buffer>> {
        let mut builder = Request::builder().method(method).uri(url);
        if let Some(h) = builder.headers_mut() {
            h.extend(headers);
        }
        let request = builder
            .body(body)
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
}

/// The server's time when it answered (its `Date` header): what ages and retention are judged by,
/// never this machine's clock.
pub(crate) fn server_time(response: &Response<Buffer>) -> Option<jiff::Timestamp> {
    let value = response.headers().get(header::DATE)?.to_str().ok()?;
    jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(value)
        .ok()
}

/// The S3 error code in a refusal's message (`NoSuchObjectLockConfiguration`), as [`status_error`]
/// put it there.
pub(crate) fn error_code(e: &opendal::Error) -> &str {
    e.message()
        .split_once(' ')
        .and_then(|(_, rest)| rest.split(':').next())
        // A reason phrase ("Not Found") where the body named no code.
        .filter(|code| !code.contains(' '))
        .unwrap_or_default()
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

    #[test]
    fn error_codes_are_read_back_from_refusals() {
        let e = status_error(
            StatusCode::NOT_FOUND,
            b"<Error><Code>NoSuchObjectLockConfiguration</Code><Message>none</Message></Error>",
        );
        assert_eq!(error_code(&e), "NoSuchObjectLockConfiguration");
        assert_eq!(error_code(&status_error(StatusCode::NOT_FOUND, b"")), "");
    }
}
