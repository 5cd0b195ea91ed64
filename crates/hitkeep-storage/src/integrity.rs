//! Integrity headers on uploads (`HITKEEP_S3_CHECKSUM`): which one a request carries, the switch from
//! CRC32C to Content-MD5 when a provider refuses `x-amz-checksum-*` headers, and how such a refusal is
//! recognised in the provider's answer.
//!
//! Requests are signed without their payload, so without one of these headers a body damaged on the
//! way would be stored as sent. CRC32C comes from OpenDAL's S3 service (it must be signed, as every
//! `x-amz-*` header must); Content-MD5 is added by [`IntegrityTransport`] after signing, because OpenDAL
//! refuses `md5` for multipart uploads, and SigV4 does not require Content-MD5 to be signed (AWS,
//! Garage, MinIO and s3s check it unsigned).

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use hitkeep_config::S3Checksum;
use http::header::{AUTHORIZATION, HeaderName, HeaderValue};
use http::{Method, Request, Response};
use opendal::raw::format_content_md5_iter;
use opendal::{Buffer, HttpBody, HttpTransport, HttpTransporter};

/// The integrity header an upload request carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Header {
    /// `x-amz-checksum-crc32c` (and `x-amz-checksum-algorithm` on CreateMultipartUpload).
    Crc32c,
    /// `Content-MD5`.
    Md5,
    /// None.
    None,
}

impl Header {
    /// How messages name it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Header::Crc32c => "x-amz-checksum-crc32c",
            Header::Md5 => "Content-MD5",
            Header::None => "no",
        }
    }
}

const CRC32C_TRYING: u8 = 0;
const CRC32C_ACCEPTED: u8 = 1;
const MD5: u8 = 2;
const NONE: u8 = 3;

/// The header choice of one storage, shared by its clones: under `auto` it starts at CRC32C and moves to
/// Content-MD5 once, for the rest of the process, when the provider refuses CRC32C.
#[derive(Debug)]
pub(crate) struct Integrity {
    setting: S3Checksum,
    state: AtomicU8,
}

impl Integrity {
    pub(crate) fn new(setting: S3Checksum) -> Integrity {
        let state = match setting {
            S3Checksum::Auto => CRC32C_TRYING,
            // Pinned: nothing will switch, so nothing needs to be kept for sending again.
            S3Checksum::Crc32c => CRC32C_ACCEPTED,
            S3Checksum::Md5 => MD5,
            S3Checksum::Off => NONE,
        };
        Integrity {
            setting,
            state: AtomicU8::new(state),
        }
    }

    /// The header uploads carry now.
    pub(crate) fn header(&self) -> Header {
        match self.state.load(Ordering::Acquire) {
            CRC32C_TRYING | CRC32C_ACCEPTED => Header::Crc32c,
            MD5 => Header::Md5,
            _ => Header::None,
        }
    }

    /// Whether a refusal of `header` could still be answered by switching and sending again, so an upload
    /// must keep what it sent until the provider is known to accept CRC32C.
    pub(crate) fn may_switch(&self, header: Header) -> bool {
        self.setting == S3Checksum::Auto
            && header == Header::Crc32c
            && self.state.load(Ordering::Acquire) != CRC32C_ACCEPTED
    }

    /// A part carrying CRC32C was stored: the provider takes the header, the create call included.
    pub(crate) fn accepted(&self) {
        let _ = self.state.compare_exchange(
            CRC32C_TRYING,
            CRC32C_ACCEPTED,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    /// The provider refused `header`. Under `auto` and for CRC32C this switches to Content-MD5 (logged by
    /// whichever upload switches first) and returns true: send the refused request again.
    pub(crate) fn switch(&self, header: Header, refusal: &Refusal, service: &str) -> bool {
        if self.setting != S3Checksum::Auto || header != Header::Crc32c {
            return false;
        }
        if self.state.swap(MD5, Ordering::AcqRel) != MD5 {
            tracing::warn!(
                service,
                refusal = %refusal,
                "the S3 service refuses the x-amz-checksum-crc32c header; uploads carry Content-MD5 from now on. Set HITKEEP_S3_CHECKSUM=md5 to start with it"
            );
        }
        true
    }
}

/// Says once per process that `off` lets a damaged body be stored: every storage opened would say it again.
pub(crate) fn warn_if_off(setting: S3Checksum) {
    static WARNED: AtomicBool = AtomicBool::new(false);
    if setting == S3Checksum::Off && !WARNED.swap(true, Ordering::AcqRel) {
        tracing::warn!(
            "HITKEEP_S3_CHECKSUM=off: uploads carry no integrity header, so a body damaged on the way can be stored as sent; `hitkeep backup verify --deep` finds it afterwards. Prefer auto or md5"
        );
    }
}

/// A provider's refusal of an integrity header, as its answer put it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The HTTP status, when known.
    pub status: Option<u16>,
    /// The S3 error code (`InvalidArgument`, `NotImplemented`); empty when the body had none.
    pub code: String,
    /// The provider's message.
    pub message: String,
}

/// Codes that mean the header was understood and the body did not match it: damage, not a refusal.
const DAMAGED: &[&str] = &["BadDigest", "InvalidDigest", "XAmzContentChecksumMismatch"];

impl Refusal {
    /// The refusal in an OpenDAL error, if it is one: its message is the provider's error (as OpenDAL
    /// renders the XML, or the raw body), its context holds the response status.
    pub(crate) fn from_opendal(err: &opendal::Error) -> Option<Refusal> {
        Refusal::parse(status_of(&err.to_string()), err.message())
    }

    /// Recognises a refusal in an error body, given as the provider sent it (`<Code>…</Code>`) or as
    /// OpenDAL renders it (`S3Error { code: "…", message: "…" }`): a 400 or 501 whose code or message
    /// names a checksum header, or a 501 NotImplemented (the generic answer to a header a provider
    /// does not implement). Only requests that carried a header are ever asked about.
    pub(crate) fn parse(status: Option<u16>, body: &str) -> Option<Refusal> {
        if !matches!(status, None | Some(400) | Some(501)) {
            return None;
        }
        let code = xml_field(body, "Code")
            .or_else(|| debug_field(body, "code"))
            .unwrap_or_default();
        let message = xml_field(body, "Message")
            .or_else(|| debug_field(body, "message"))
            .unwrap_or_else(|| body.trim().to_owned());
        let lower = format!("{code} {message}").to_ascii_lowercase();
        let damaged = DAMAGED.contains(&code.as_str()) || lower.contains("match");
        let names_header = lower.contains("checksum") || lower.contains("content-md5");
        let not_implemented = code == "NotImplemented" || status == Some(501);
        (!damaged && (names_header || not_implemented)).then_some(Refusal {
            status,
            code,
            message,
        })
    }
}

impl Refusal {
    /// Whether the provider named a checksum header (`x-amz-checksum-*`, `Content-MD5`), rather than
    /// answering 501 NotImplemented to some header of the request.
    pub(crate) fn names_checksum(&self) -> bool {
        let lower = format!("{} {}", self.code, self.message).to_ascii_lowercase();
        lower.contains("checksum") || lower.contains("content-md5")
    }
}

impl fmt::Display for Refusal {
    /// `400 InvalidArgument: Unsupported header 'x-amz-checksum-crc32c' received for this API call.`
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let code = if self.code.is_empty() {
            "error"
        } else {
            &self.code
        };
        match self.status {
            Some(status) => write!(f, "{status} {code}: {}", self.message),
            None => write!(f, "{code}: {}", self.message),
        }
    }
}

/// The status in OpenDAL's rendering of the response context: `response: Parts { status: 400, … }`.
fn status_of(text: &str) -> Option<u16> {
    let at = text.find("status: ")? + "status: ".len();
    text.get(at..at + 3)?.parse().ok()
}

fn xml_field(body: &str, name: &str) -> Option<String> {
    let open = format!("<{name}>");
    let start = body.find(&open)? + open.len();
    let end = start + body[start..].find(&format!("</{name}>"))?;
    Some(body[start..end].trim().to_owned())
}

/// A string field of a Rust `Debug` rendering: `code: "InvalidArgument"`.
fn debug_field(body: &str, name: &str) -> Option<String> {
    let open = format!("{name}: \"");
    let start = body.find(&open)? + open.len();
    let mut out = String::new();
    let mut chars = body[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.extend(chars.next()),
            c => out.push(c),
        }
    }
    None
}

/// Sits between OpenDAL and the network: adds `Content-MD5` to signed uploads when asked to, and
/// notes when the provider stores a part that carried CRC32C (then it takes the header, and uploads
/// stop keeping what they sent for a possible switch).
#[derive(Debug)]
pub(crate) struct IntegrityTransport {
    pub inner: HttpTransporter,
    pub integrity: std::sync::Arc<Integrity>,
    pub add_md5: bool,
}

impl HttpTransport for IntegrityTransport {
    async fn fetch(&self, mut req: Request<Buffer>) -> opendal::Result<Response<HttpBody>> {
        // Signed PUTs only: PutObject and UploadPart (copies carry no body of ours), not the
        // credential chain's own requests (the instance metadata token is a PUT too).
        let upload = req.method() == Method::PUT
            && req.headers().contains_key(AUTHORIZATION)
            && !req.headers().contains_key("x-amz-copy-source");
        if self.add_md5 && upload && !req.headers().contains_key("content-md5") {
            let md5 = format_content_md5_iter(req.body().clone());
            let value = HeaderValue::from_str(&md5).map_err(|e| {
                opendal::Error::new(opendal::ErrorKind::Unexpected, "Content-MD5 header")
                    .set_source(e)
            })?;
            req.headers_mut()
                .insert(HeaderName::from_static("content-md5"), value);
        }
        let crc32c_part = upload
            && req.headers().contains_key("x-amz-checksum-crc32c")
            && req.uri().query().is_some_and(|q| q.contains("partNumber="));
        let resp = self.inner.fetch(req).await?;
        if crc32c_part && resp.status().is_success() {
            self.integrity.accepted();
        }
        Ok(resp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B2: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"yes\"?>\n<Error>\n    <Code>InvalidArgument</Code>\n    <Message>Unsupported header 'x-amz-checksum-crc32c' received for this API call.</Message>\n</Error>";
    const NOT_IMPLEMENTED: &str = "<Error><Code>NotImplemented</Code><Message>A header you provided implies functionality that is not implemented</Message><Resource>/bucket/key</Resource><RequestId>4442587FB7D0A2F9</RequestId></Error>";

    #[test]
    fn b2_refuses_the_crc32c_header() {
        let r = Refusal::parse(Some(400), B2).expect("a refusal");
        assert_eq!(r.code, "InvalidArgument");
        assert_eq!(
            r.to_string(),
            "400 InvalidArgument: Unsupported header 'x-amz-checksum-crc32c' received for this API call."
        );
    }

    #[test]
    fn a_501_not_implemented_is_a_refusal_even_without_naming_the_header() {
        let r = Refusal::parse(Some(501), NOT_IMPLEMENTED).expect("a refusal");
        assert_eq!(r.code, "NotImplemented");
        assert!(
            r.message.starts_with("A header you provided implies"),
            "{r}"
        );
    }

    /// OpenDAL parses the XML and renders it with `Debug`; the status is in its context.
    #[test]
    fn opendal_renderings_are_read_too() {
        let message = r#"S3Error { code: "InvalidArgument", message: "Unsupported header 'x-amz-checksum-crc32c' received for this API call.", resource: "", request_id: "" }"#;
        let context = "Unexpected (permanent) at write, context: { service_operation: PutObject, response: Parts { status: 400, version: HTTP/1.1, headers: {} } } => ...";
        assert_eq!(status_of(context), Some(400));
        let r = Refusal::parse(status_of(context), message).expect("a refusal");
        assert_eq!(
            (r.code.as_str(), r.message.as_str()),
            (
                "InvalidArgument",
                "Unsupported header 'x-amz-checksum-crc32c' received for this API call."
            )
        );
        // R2's old answer, and a body that is not XML at all (some gateways).
        let r2 = r#"S3Error { code: "NotImplemented", message: "Header 'x-amz-checksum-algorithm' with value 'CRC32C' not implemented", resource: "", request_id: "" }"#;
        assert!(Refusal::parse(Some(501), r2).is_some());
        assert!(Refusal::parse(Some(400), "x-amz-checksum-crc32c is not supported").is_some());
    }

    /// A body that did not match its header is damage (sent again by the caller), and other errors are
    /// not about the header at all.
    #[test]
    fn damage_and_other_errors_are_not_refusals() {
        let bad_digest = "<Error><Code>BadDigest</Code><Message>The CRC32C you specified did not match the calculated checksum.</Message></Error>";
        let mismatch = "<Error><Code>InvalidRequest</Code><Message>Value for x-amz-checksum-crc32c header is invalid: does not match</Message></Error>";
        let denied = "<Error><Code>AccessDenied</Code><Message>Access Denied</Message></Error>";
        let too_small = "<Error><Code>EntityTooSmall</Code><Message>Your proposed upload is smaller than the minimum allowed object size.</Message></Error>";
        assert_eq!(Refusal::parse(Some(400), bad_digest), None);
        assert_eq!(Refusal::parse(Some(400), mismatch), None);
        assert_eq!(Refusal::parse(Some(403), denied), None);
        assert_eq!(Refusal::parse(Some(400), too_small), None);
        // The B2 body with a status that is not a refusal's.
        assert_eq!(Refusal::parse(Some(500), B2), None);
    }

    #[test]
    fn auto_switches_once_and_only_from_crc32c() {
        let refusal = Refusal::parse(Some(400), B2).unwrap();
        let auto = Integrity::new(S3Checksum::Auto);
        assert_eq!(auto.header(), Header::Crc32c);
        assert!(auto.may_switch(Header::Crc32c));
        assert!(auto.switch(Header::Crc32c, &refusal, "test"));
        assert_eq!(auto.header(), Header::Md5);
        assert!(
            !auto.switch(Header::Md5, &refusal, "test"),
            "a refused Content-MD5 has nowhere to go"
        );
        let pinned = Integrity::new(S3Checksum::Crc32c);
        assert!(!pinned.may_switch(Header::Crc32c));
        assert!(!pinned.switch(Header::Crc32c, &refusal, "test"));
        assert_eq!(pinned.header(), Header::Crc32c);
        assert_eq!(Integrity::new(S3Checksum::Off).header(), Header::None);
    }

    #[test]
    fn an_accepted_part_ends_the_need_to_keep_data() {
        let auto = Integrity::new(S3Checksum::Auto);
        auto.accepted();
        assert!(!auto.may_switch(Header::Crc32c));
        assert_eq!(auto.header(), Header::Crc32c);
    }
}
