//! The storage error: what failed, on which object, and what a person can do about it.
//!
//! Policy: every public function returns [`Result`]. OpenDAL errors are classified once, in
//! [`Error::from_opendal`], into a [`ErrorKind`] a caller can branch on, with a hint for a person; the
//! OpenDAL error stays attached as the source, for logs. No error ever holds a credential: OpenDAL's
//! messages carry request URIs but not the signing headers, and our own messages name settings, not values.

use std::fmt;

use crate::integrity::{Header, Refusal};

/// What went wrong, coarsely enough to act on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The object or directory does not exist.
    NotFound,
    /// The bucket does not exist (or this endpoint does not have it).
    BucketNotFound,
    /// The server refused the credentials, or none could be found.
    AccessDenied,
    /// The server could not be reached: connection refused, DNS, TLS.
    Unreachable,
    /// An operation took too long.
    Timeout,
    /// Data did not match its expected size or SHA-256.
    Integrity,
    /// The service refused the integrity header uploads carry (`x-amz-checksum-crc32c` or
    /// `Content-MD5`), and `HITKEEP_S3_CHECKSUM` leaves no other to try.
    ChecksumRefused,
    /// A key that is not a clean relative path (`..`, empty segments, a leading `/`).
    InvalidKey,
    /// Reading or writing a local file failed.
    LocalIo,
    /// The service does not implement a request that HitKeep can do without (ListMultipartUploads):
    /// worth reporting, not worth failing a backup for.
    Unsupported,
    /// Anything else the storage service reported.
    Other,
}

/// A storage operation failed.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    operation: &'static str,
    target: String,
    message: String,
    hint: Option<String>,
    temporary: bool,
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

/// The storage crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn new(
        kind: ErrorKind,
        operation: &'static str,
        target: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Error {
            kind,
            operation,
            target: target.into(),
            message: message.into(),
            hint: None,
            temporary: false,
            source: None,
        }
    }

    pub(crate) fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    pub(crate) fn with_source(
        mut self,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Local file trouble, naming the file.
    pub(crate) fn local(
        operation: &'static str,
        path: &std::path::Path,
        err: std::io::Error,
    ) -> Self {
        let message = err.to_string();
        Error::new(
            ErrorKind::LocalIo,
            operation,
            path.display().to_string(),
            message,
        )
        .with_source(err)
    }

    /// Classifies an OpenDAL error. `service` names the endpoint, so "bucket missing" can say where.
    pub(crate) fn from_opendal(
        err: opendal::Error,
        operation: &'static str,
        target: String,
        service: &Service,
    ) -> Self {
        let chain = error_chain(&err);
        let temporary = err.is_temporary();
        let (kind, message, hint) = classify(&err, &chain, service);
        let mut e = Error::new(kind, operation, target, message);
        e.hint = hint;
        e.temporary = temporary;
        e.with_source(err)
    }

    /// The service refused the integrity header `header`. One line, naming the provider's code and
    /// message and the setting to try; OpenDAL's request context goes to the debug log, not here.
    pub(crate) fn checksum_refused(
        operation: &'static str,
        target: String,
        service: &Service,
        header: Header,
        refusal: &Refusal,
    ) -> Self {
        let (next, hint) = match header {
            Header::Md5 => (
                "off",
                "this service takes neither integrity header; with HITKEEP_S3_CHECKSUM=off uploads carry none, and `hitkeep backup verify --deep` is what finds a body damaged on the way",
            ),
            _ => (
                "md5",
                "this service does not take x-amz-checksum-* headers: set HITKEEP_S3_CHECKSUM=md5 (Content-MD5), or auto to switch by itself; `hitkeep doctor` shows which headers it accepts",
            ),
        };
        Error::new(
            ErrorKind::ChecksumRefused,
            operation,
            target,
            format!(
                "{} refused the {} header ({refusal}); set HITKEEP_S3_CHECKSUM={next}",
                service.name,
                header.name()
            ),
        )
        .with_hint(hint)
    }

    /// Data that did not come back as written, for callers that check it themselves.
    pub fn integrity(target: &str) -> Self {
        Error::new(ErrorKind::Integrity, "check", target, "the object did not read back as written")
            .with_hint("the storage service returns different data than it was given; do not use it for backups")
    }

    /// A downloaded object whose size or SHA-256 is not what its manifest records: damaged at rest
    /// or on the way, or replaced. For callers that read objects their own way, too.
    pub fn damaged(target: String, want: &crate::ObjectInfo, got: &crate::ObjectInfo) -> Self {
        Error::new(
            ErrorKind::Integrity,
            "download",
            target,
            format!(
                "expected {} bytes with SHA-256 {}, got {} bytes with SHA-256 {}",
                want.size, want.sha256, got.size, got.sha256
            ),
        )
        .with_hint("the stored object is damaged or was replaced; use another snapshot")
    }

    /// A local file problem, for callers that stage files themselves.
    pub fn local_io(operation: &'static str, path: &std::path::Path, err: std::io::Error) -> Self {
        Error::local(operation, path, err)
    }

    /// The kind of failure.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// What was being done: `upload`, `list`, `open`.
    pub fn operation(&self) -> &'static str {
        self.operation
    }

    /// Whether retrying later may succeed (OpenDAL's own judgement, after its retries ran out).
    pub fn is_temporary(&self) -> bool {
        self.temporary
    }

    /// Advice for a person, when there is any.
    pub fn hint(&self) -> Option<&str> {
        self.hint.as_deref()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.operation, self.target, self.message)?;
        if let Some(hint) = &self.hint {
            write!(f, "\n  hint: {hint}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Where requests go, for messages: `http://127.0.0.1:9000` or `AWS S3 (eu-central-1)`.
#[derive(Clone, Debug)]
pub(crate) struct Service {
    pub name: String,
    pub bucket: Option<String>,
    pub use_ssl: bool,
}

fn error_chain(err: &opendal::Error) -> String {
    let mut text = format!("{err:?}");
    let mut source = std::error::Error::source(err);
    while let Some(s) = source {
        text.push_str(" | ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Which setting a rejected request points at. Servers word it differently: AWS and MinIO send
/// SignatureDoesNotMatch and InvalidAccessKeyId, Garage an AccessDenied saying "Invalid signature" or
/// "No such key".
fn credential_hint(chain: &str, lower: &str) -> Option<&'static str> {
    let has = |needle: &str| chain.contains(needle);
    if has("AuthorizationHeaderMalformed") || lower.contains("unexpected scope") {
        return Some(
            "the server expects another region: set HITKEEP_S3_REGION to the bucket's region (MinIO and Garage: us-east-1 unless configured, R2: auto)",
        );
    }
    if has("InvalidAccessKeyId") || lower.contains("no such key: ") {
        return Some("the server does not know this access key: check HITKEEP_S3_ACCESS_KEY_ID");
    }
    if has("SignatureDoesNotMatch") || lower.contains("invalid signature") {
        return Some(
            "the signature did not match: check HITKEEP_S3_SECRET_ACCESS_KEY (and HITKEEP_S3_REGION, which signing uses)",
        );
    }
    if has("InvalidToken") || has("ExpiredToken") {
        return Some(
            "the session token was refused: renew HITKEEP_S3_SESSION_TOKEN, or unset it with static keys",
        );
    }
    None
}

fn classify(
    err: &opendal::Error,
    chain: &str,
    service: &Service,
) -> (ErrorKind, String, Option<String>) {
    let has = |needle: &str| chain.contains(needle);
    let lower = chain.to_ascii_lowercase();
    let bucket = service.bucket.as_deref().unwrap_or("?");
    if has("NoSuchBucket") {
        return (
            ErrorKind::BucketNotFound,
            format!("bucket {bucket:?} does not exist at {}", service.name),
            Some(
                "create the bucket, or fix the bucket name in the path or HITKEEP_S3_ENDPOINT"
                    .into(),
            ),
        );
    }
    if has("InvalidDigest") || has("BadDigest") || has("XAmzContentChecksumMismatch") {
        return (
            ErrorKind::Integrity,
            format!("{} received different bytes than were sent (checksum mismatch)", service.name),
            Some("something on the network path damaged the request, so nothing was stored; try again, and prefer HTTPS, which detects this in transit".into()),
        );
    }
    if let Some(hint) = credential_hint(chain, &lower) {
        return (
            ErrorKind::AccessDenied,
            format!("{} rejected the credentials", service.name),
            Some(hint.into()),
        );
    }
    if lower.contains("signing credential") || lower.contains("no valid credential") {
        return (
            ErrorKind::AccessDenied,
            "no S3 credentials found".into(),
            Some("set HITKEEP_S3_ACCESS_KEY_ID and HITKEEP_S3_SECRET_ACCESS_KEY, or configure the AWS credential chain (AWS_PROFILE, an IAM role)".into()),
        );
    }
    if err.kind() == opendal::ErrorKind::PermissionDenied || has("AccessDenied") {
        return (
            ErrorKind::AccessDenied,
            format!("{} denied access", service.name),
            Some("check HITKEEP_S3_ACCESS_KEY_ID and HITKEEP_S3_SECRET_ACCESS_KEY; if they are right, the key lacks permission: allow s3:ListBucket, s3:GetObject, s3:PutObject and s3:DeleteObject on the bucket and prefix".into()),
        );
    }
    if lower.contains("timeout reached") || lower.contains("timed out") {
        return (
            ErrorKind::Timeout,
            "timed out".into(),
            Some(format!(
                "is {} reachable and not overloaded? the request was retried before giving up",
                service.name
            )),
        );
    }
    let tls = [
        "tls",
        "certificate",
        "invalidcontenttype",
        "corrupt message",
        "wrong version number",
        "handshake",
    ];
    if service.use_ssl && tls.iter().any(|t| lower.contains(t)) {
        return (
            ErrorKind::Unreachable,
            format!("TLS handshake with {} failed", service.name),
            Some("if the server speaks plain HTTP (MinIO, Garage on a LAN), set HITKEEP_S3_USE_SSL=false".into()),
        );
    }
    if lower.contains("connection refused")
        || lower.contains("error sending request")
        || lower.contains("dns error")
        || lower.contains("connect error")
    {
        let mut hint = format!(
            "is the server running at {}? check HITKEEP_S3_ENDPOINT",
            service.name
        );
        if service.use_ssl {
            hint.push_str("; if it speaks plain HTTP, set HITKEEP_S3_USE_SSL=false");
        }
        return (
            ErrorKind::Unreachable,
            format!("cannot connect to {}", service.name),
            Some(hint),
        );
    }
    if err.kind() == opendal::ErrorKind::NotFound {
        return (ErrorKind::NotFound, "not found".into(), None);
    }
    (ErrorKind::Other, err.to_string(), None)
}

#[cfg(test)]
mod credential_tests {
    use super::credential_hint;

    fn hint(chain: &str) -> &'static str {
        credential_hint(chain, &chain.to_ascii_lowercase()).unwrap_or("")
    }

    /// Each server words a rejection its own way (these are Garage's and AWS's); each points at the
    /// one setting to fix.
    #[test]
    fn rejections_point_at_the_setting_to_fix() {
        let garage_secret =
            r#"S3Error { code: "AccessDenied", message: "Forbidden: Invalid signature" }"#;
        let garage_key =
            r#"S3Error { code: "AccessDenied", message: "Forbidden: No such key: GK00" }"#;
        let region =
            r#"S3Error { code: "AuthorizationHeaderMalformed", message: "unexpected scope" }"#;
        assert!(hint(garage_secret).contains("HITKEEP_S3_SECRET_ACCESS_KEY"));
        assert!(hint("SignatureDoesNotMatch").contains("HITKEEP_S3_SECRET_ACCESS_KEY"));
        assert!(hint(garage_key).contains("HITKEEP_S3_ACCESS_KEY_ID"));
        assert!(hint("InvalidAccessKeyId").contains("HITKEEP_S3_ACCESS_KEY_ID"));
        assert!(hint(region).contains("HITKEEP_S3_REGION"));
        assert!(hint("ExpiredToken").contains("HITKEEP_S3_SESSION_TOKEN"));
        assert_eq!(
            hint(r#"S3Error { code: "AccessDenied", message: "Access Denied" }"#),
            ""
        );
    }
}
