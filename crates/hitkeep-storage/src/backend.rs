//! Building the OpenDAL operator for a location: the service, then the layers.

use std::time::Duration;

use hitkeep_config::{Credentials, Location, S3Location, S3Settings, UrlStyle};
use opendal::layers::{RetryInterceptor, RetryLayer, TimeoutLayer, TracingLayer};
use opendal::{Operator, services};

use crate::error::{Error, ErrorKind, Result, Service};

/// Where fs writes are staged before an atomic rename into place, inside the location's root so the
/// rename never crosses filesystems. Listings hide it.
pub(crate) const FS_STAGING_DIR: &str = ".hitkeep-tmp";

/// How hard to try before giving up. The defaults suit a backup that runs unattended over the internet.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct StorageOptions {
    /// Retries after the first attempt, with exponential backoff and jitter.
    pub retries: usize,
    /// First backoff delay.
    pub min_backoff: Duration,
    /// Longest backoff delay.
    pub max_backoff: Duration,
    /// Limit for a whole non-streaming operation (stat, list page, delete).
    pub timeout: Duration,
    /// Limit for one read or write of a stream (a part of a multipart upload).
    pub io_timeout: Duration,
}

/// Retries after the first attempt.
pub const DEFAULT_RETRIES: usize = 6;
/// First backoff delay.
pub const DEFAULT_MIN_BACKOFF: Duration = Duration::from_millis(250);
/// Longest backoff delay.
pub const DEFAULT_MAX_BACKOFF: Duration = Duration::from_secs(20);
/// Limit for a non-streaming operation.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);
/// Limit for one streaming read or write.
pub const DEFAULT_IO_TIMEOUT: Duration = Duration::from_secs(120);

impl Default for StorageOptions {
    fn default() -> Self {
        StorageOptions {
            retries: DEFAULT_RETRIES,
            min_backoff: DEFAULT_MIN_BACKOFF,
            max_backoff: DEFAULT_MAX_BACKOFF,
            timeout: DEFAULT_TIMEOUT,
            io_timeout: DEFAULT_IO_TIMEOUT,
        }
    }
}

pub(crate) fn build(
    location: &Location,
    s3: &S3Settings,
    options: &StorageOptions,
) -> Result<(Operator, Service)> {
    let (op, service) = match location {
        Location::Local(path) => fs_operator(path)?,
        Location::S3(s3_location) => s3_operator(s3_location, s3)?,
    };
    // Order matters: the timeout sits inside the retry so that a timed-out attempt is retried, and tracing
    // sits outside so one span covers an operation with all its attempts.
    let op = op
        .layer(
            TimeoutLayer::new()
                .with_timeout(options.timeout)
                .with_io_timeout(options.io_timeout),
        )
        .layer(
            RetryLayer::new()
                .with_jitter()
                .with_max_times(options.retries)
                .with_min_delay(options.min_backoff)
                .with_max_delay(options.max_backoff)
                .with_notify(LogRetry),
        )
        .layer(TracingLayer::new());
    Ok((op, service))
}

fn fs_operator(path: &std::path::Path) -> Result<(Operator, Service)> {
    let target = path.display().to_string();
    let root = path.to_str().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidKey,
            "open",
            &target,
            "the path is not valid UTF-8",
        )
    })?;
    let staging = path.join(FS_STAGING_DIR);
    let builder = services::Fs::default()
        .root(root)
        .atomic_write_dir(&staging.to_string_lossy());
    let service = Service {
        name: target.clone(),
        bucket: None,
        use_ssl: false,
    };
    let op =
        Operator::new(builder).map_err(|e| Error::from_opendal(e, "open", target, &service))?;
    Ok((op, service))
}

fn s3_operator(location: &S3Location, s3: &S3Settings) -> Result<(Operator, Service)> {
    let endpoint = s3.endpoint_url().unwrap_or_else(|| {
        let scheme = if s3.use_ssl { "https" } else { "http" };
        format!("{scheme}://s3.{}.amazonaws.com", s3.region)
    });
    let mut builder = services::S3::default()
        .bucket(location.bucket())
        .root(&format!("/{}", location.prefix()))
        .region(&s3.region)
        .endpoint(&endpoint)
        // Requests are signed without their payload, so a body damaged on the way would be stored
        // as sent: a CRC32C header per PUT and part makes the server reject it instead (the e2e
        // fault proxy found backups committing flipped bits that only `verify` caught).
        .checksum_algorithm("crc32c");
    if s3.url_style == UrlStyle::VirtualHost {
        builder = builder.enable_virtual_host_style();
    }
    builder = match &s3.credentials {
        // Static keys are the whole truth: stray AWS_* variables or profiles must not change what is used.
        Credentials::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } => {
            let b = builder
                .access_key_id(access_key_id.expose())
                .secret_access_key(secret_access_key.expose())
                .disable_config_load();
            match session_token {
                Some(token) => b.session_token(token.expose()),
                None => b,
            }
        }
        Credentials::Chain => builder,
    };
    let service = Service {
        name: s3.service_name(),
        bucket: Some(location.bucket().to_owned()),
        use_ssl: s3.use_ssl,
    };
    let op = Operator::new(builder)
        .map_err(|e| Error::from_opendal(e, "open", location.to_string(), &service))?;
    Ok((op, service))
}

/// Logs each retry, so a flaky network shows up in the logs before it becomes a failed backup.
#[derive(Debug)]
struct LogRetry;

impl RetryInterceptor for LogRetry {
    fn intercept(&self, event: opendal::layers::RetryEvent<'_>) {
        tracing::warn!(
            operation = %event.op,
            attempt = event.attempt,
            retry_in = ?event.retry_after,
            error = %event.err,
            "storage request failed, retrying"
        );
    }
}
