//! Building the OpenDAL operator for a location: the service, then the layers.

use std::sync::Arc;
use std::time::Duration;

use hitkeep_config::{Credentials, Location, S3Location, S3Settings, UrlStyle};
use opendal::layers::{RetryInterceptor, RetryLayer, TimeoutLayer, TracingLayer};
use opendal::{HttpTransporter, Operator, services};

use crate::error::{Error, ErrorKind, Result, Service};
use crate::integrity::{Header, Integrity, IntegrityTransport};

/// Where fs writes are staged before an atomic rename into place, inside the location's root so the
/// rename never crosses filesystems: each opened storage in a locked folder of its own in it
/// (`partial`), so that what a killed process left can be told apart. Listings hide it.
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

/// The operators of one location. `plain` reads, lists, deletes and writes without an integrity header;
/// on S3 two more write with one, so that `auto` can change header between two requests.
#[derive(Clone, Debug)]
pub(crate) struct Operators {
    pub plain: Operator,
    crc32c: Option<Operator>,
    md5: Option<Operator>,
}

impl Operators {
    /// The operator whose uploads carry `header` (local directories have only one).
    pub(crate) fn writing(&self, header: Header) -> &Operator {
        let op = match header {
            Header::Crc32c => self.crc32c.as_ref(),
            Header::Md5 => self.md5.as_ref(),
            Header::None => None,
        };
        op.unwrap_or(&self.plain)
    }
}

pub(crate) fn build(
    location: &Location,
    s3: &S3Settings,
    options: &StorageOptions,
    integrity: &Arc<Integrity>,
    fs_staging: Option<&std::path::Path>,
) -> Result<(Operators, Service)> {
    match location {
        Location::Local(path) => {
            let staging = fs_staging.map_or_else(|| path.join(FS_STAGING_DIR), |d| d.to_owned());
            let (op, service) = fs_operator(path, &staging)?;
            let plain = with_layers(op, options);
            Ok((
                Operators {
                    plain,
                    crc32c: None,
                    md5: None,
                },
                service,
            ))
        }
        Location::S3(s3_location) => {
            let service = Service {
                name: s3.service_name(),
                bucket: Some(s3_location.bucket().to_owned()),
                use_ssl: s3.use_ssl,
            };
            let op = |header| {
                s3_operator(s3_location, s3, header, integrity, &service)
                    .map(|op| with_layers(op, options))
            };
            let operators = Operators {
                plain: op(Header::None)?,
                crc32c: Some(op(Header::Crc32c)?),
                md5: Some(op(Header::Md5)?),
            };
            Ok((operators, service))
        }
    }
}

fn with_layers(op: Operator, options: &StorageOptions) -> Operator {
    // Order matters: the timeout sits inside the retry so that a timed-out attempt is retried, and tracing
    // sits outside so one span covers an operation with all its attempts.
    op.layer(
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
    .layer(TracingLayer::new())
}

/// `staging` is where writes are staged before their rename: this storage's own folder in
/// `.hitkeep-tmp/` (see `partial`), which OpenDAL creates when missing.
fn fs_operator(path: &std::path::Path, staging: &std::path::Path) -> Result<(Operator, Service)> {
    let target = path.display().to_string();
    let root = path.to_str().ok_or_else(|| {
        Error::new(
            ErrorKind::InvalidKey,
            "open",
            &target,
            "the path is not valid UTF-8",
        )
    })?;
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

/// An S3 operator whose uploads carry `header`. Requests are signed without their payload, so a body
/// damaged on the way would be stored as sent: the header makes the server refuse it instead (the e2e
/// fault proxy found backups committing flipped bits that only `verify` caught).
fn s3_operator(
    location: &S3Location,
    s3: &S3Settings,
    header: Header,
    integrity: &Arc<Integrity>,
    service: &Service,
) -> Result<Operator> {
    let endpoint = s3.endpoint_url().unwrap_or_else(|| {
        let scheme = if s3.use_ssl { "https" } else { "http" };
        format!("{scheme}://s3.{}.amazonaws.com", s3.region)
    });
    let mut builder = services::S3::default()
        .bucket(location.bucket())
        .root(&format!("/{}", location.prefix()))
        .region(&s3.region)
        .endpoint(&endpoint);
    if header == Header::Crc32c {
        builder = builder.checksum_algorithm("crc32c");
    }
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
    let op = Operator::new(builder)
        .map_err(|e| Error::from_opendal(e, "open", location.to_string(), service))?;
    // Content-MD5 is added on the way out (see `integrity`); the CRC32C operator's transport notes
    // when the provider accepts the header.
    let transport = IntegrityTransport {
        inner: op.context().http_transport().clone(),
        integrity: integrity.clone(),
        add_md5: header == Header::Md5,
    };
    let context = op
        .context()
        .with_http_transport(HttpTransporter::new(transport));
    Ok(op.with_context(context))
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
