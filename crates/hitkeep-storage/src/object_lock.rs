//! S3 Object Lock, which OpenDAL does not expose: whether the bucket has it
//! (`GetObjectLockConfiguration`), an object's retention (read from `HeadObject`'s
//! `x-amz-object-lock-*` headers, which every implementation fills, where moto 5.2 answers
//! `GetObjectRetention` with a 500) and setting it (`PutObjectRetention`).
//!
//! Every date is judged by the server's clock (its `Date` header), never this machine's: a host
//! whose clock runs a year behind must neither lock for a year too short nor take a locked
//! snapshot for an expired one.

use std::fmt;
use std::sync::Arc;

use hitkeep_config::LockMode;
use http::{HeaderMap, HeaderValue, Method, Response, header};
use opendal::Buffer;
use opendal::raw::{QueryPairsWriter, format_content_md5};
use serde::Deserialize;

use crate::error::{Error, ErrorKind, Result, Service};
use crate::s3api::{SignedS3, error_code, server_time};

const CONFIG: &str = "read object lock configuration";
const HEAD: &str = "read retention";
const PUT: &str = "set retention";

/// How long an object is kept, and how firmly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    /// Who can lift it early.
    pub mode: LockMode,
    /// Until when (the server's clock) it can be neither deleted nor overwritten.
    pub until: jiff::Timestamp,
}

impl Retention {
    /// Whether this retention keeps an object at least as long and as firmly as `other`.
    pub fn covers(&self, other: Retention) -> bool {
        self.until >= other.until && firmer(self.mode, other.mode) == self.mode
    }
}

fn firmer(a: LockMode, b: LockMode) -> LockMode {
    match (a, b) {
        (LockMode::Compliance, _) | (_, LockMode::Compliance) => LockMode::Compliance,
        _ => LockMode::Governance,
    }
}

/// An object's retention and the server's time when it said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retained {
    /// `None` when the object has none.
    pub retention: Option<Retention>,
    /// The server's `Date`.
    pub server_time: Option<jiff::Timestamp>,
}

impl Retained {
    /// Until when the object is still locked, by the server's clock; with no `Date` from the
    /// server, any retention counts as still running (nothing is deleted on this machine's word).
    pub fn locked_until(&self) -> Option<jiff::Timestamp> {
        let retention = self.retention?;
        match self.server_time {
            Some(now) if retention.until <= now => None,
            _ => Some(retention.until),
        }
    }
}

/// What the bucket says of Object Lock, and the server's time when it said so.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketLock {
    /// Whether objects in the bucket can be locked at all.
    pub enabled: bool,
    /// The server's `Date`.
    pub server_time: Option<jiff::Timestamp>,
}

/// The Object Lock requests of one S3 location.
pub(crate) struct ObjectLocks {
    api: Arc<SignedS3>,
    /// The location's prefix with a trailing `/`; `""` for a whole bucket.
    prefix: String,
    location: String,
    service: Service,
}

impl fmt::Debug for ObjectLocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ObjectLocks")
            .field("api", &self.api)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "PascalCase")]
struct LockConfiguration {
    object_lock_enabled: String,
}

impl ObjectLocks {
    pub(crate) fn new(
        api: Arc<SignedS3>,
        prefix: &str,
        location: String,
        service: &Service,
    ) -> ObjectLocks {
        let prefix = match prefix {
            "" => String::new(),
            p => format!("{p}/"),
        };
        ObjectLocks {
            api,
            prefix,
            location,
            service: service.clone(),
        }
    }

    pub(crate) async fn bucket(&self) -> Result<BucketLock> {
        let url = QueryPairsWriter::new(self.api.endpoint())
            .push("object-lock", "")
            .finish();
        match self.api.send(Method::GET, &url).await {
            Ok(response) => {
                let now = server_time(&response);
                let body = response.into_body().to_bytes();
                let config: LockConfiguration =
                    quick_xml::de::from_str(&String::from_utf8_lossy(&body)).unwrap_or_default();
                Ok(BucketLock {
                    enabled: config.object_lock_enabled == "Enabled",
                    server_time: now,
                })
            }
            Err(e) if error_code(&e) == "ObjectLockConfigurationNotFoundError" => Ok(BucketLock {
                enabled: false,
                server_time: None,
            }),
            Err(e) => Err(self.err(e, CONFIG, "")),
        }
    }

    pub(crate) async fn retained(&self, key: &str) -> Result<Retained> {
        let response = self
            .api
            .send(Method::HEAD, &self.object_url(key))
            .await
            .map_err(|e| self.err(e, HEAD, key))?;
        let retention = retention_in(&response).map_err(|why| {
            Error::new(ErrorKind::Other, HEAD, self.describe(key), why.to_owned())
        })?;
        Ok(Retained {
            retention,
            server_time: server_time(&response),
        })
    }

    /// Sets `want` unless the object is already kept at least as long: a retention is never
    /// shortened (S3 refuses it in compliance mode and allows it in governance only with a bypass
    /// this crate never sends).
    pub(crate) async fn retain(&self, key: &str, want: Retention) -> Result<()> {
        let want = match self.retained(key).await?.retention {
            Some(held) if held.covers(want) => return Ok(()),
            // The later date and the firmer mode: S3 refuses to weaken a compliance lock, and
            // one asked for must not be left a governance lock.
            Some(held) => Retention {
                mode: firmer(held.mode, want.mode),
                until: held.until.max(want.until),
            },
            None => want,
        };
        let body = format!(
            "<Retention xmlns=\"http://s3.amazonaws.com/doc/2006-03-01/\"><Mode>{}</Mode><RetainUntilDate>{}</RetainUntilDate></Retention>",
            want.mode.as_s3(),
            want.until.strftime("%Y-%m-%dT%H:%M:%SZ"),
        );
        let mut headers = HeaderMap::new();
        // Required by AWS for PutObjectRetention.
        let md5 = format_content_md5(body.as_bytes());
        if let Ok(v) = HeaderValue::from_str(&md5) {
            headers.insert("content-md5", v);
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/xml"),
        );
        let url = QueryPairsWriter::new(&self.object_url(key))
            .push("retention", "")
            .finish();
        self.api
            .send_with(Method::PUT, &url, headers, Buffer::from(body.into_bytes()))
            .await
            .map(drop)
            .map_err(|e| self.err(e, PUT, key))
    }

    /// The versions of this location's objects (a locked bucket is a versioned one).
    pub(crate) fn versions(&self) -> crate::versions::Versions<'_> {
        crate::versions::Versions {
            api: &self.api,
            prefix: &self.prefix,
            location: &self.location,
            service: &self.service,
        }
    }

    fn object_url(&self, key: &str) -> String {
        self.api.object_url(&format!("{}{key}", self.prefix))
    }

    fn err(&self, e: opendal::Error, operation: &'static str, key: &str) -> Error {
        // Classified here, as `from_opendal` has no such kind: a store that answers 501 (s3s-fs,
        // Garage) has no Object Lock, which is a fact to act on, not a failure of the request.
        if e.kind() == opendal::ErrorKind::Unsupported {
            return Error::new(
                ErrorKind::Unsupported,
                operation,
                self.describe(key),
                format!("{} does not implement S3 Object Lock ({e})", self.service.name),
            )
            .with_hint("use a store that does (AWS S3, MinIO, Ceph, Backblaze B2, Wasabi) or set HITKEEP_BACKUP_OBJECT_LOCK_DAYS=0");
        }
        let code = error_code(&e).to_owned();
        let error = Error::from_opendal(e, operation, self.describe(key), &self.service);
        match (error.kind(), code.as_str()) {
            (_, "InvalidRequest") if operation == PUT => error.with_hint(
                "the bucket has no Object Lock: it must be turned on for the bucket (see `hitkeep doctor`), or set HITKEEP_BACKUP_OBJECT_LOCK_DAYS=0",
            ),
            (ErrorKind::AccessDenied, _) => error.with_hint(
                "the key may lack s3:GetBucketObjectLockConfiguration, s3:GetObjectRetention or s3:PutObjectRetention: allow them on the bucket",
            ),
            _ => error,
        }
    }

    fn describe(&self, key: &str) -> String {
        match key {
            "" => self.location.clone(),
            key => format!("{}/{key}", self.location.trim_end_matches('/')),
        }
    }
}

/// The retention a `HeadObject` answer carries, if any.
fn retention_in(
    response: &Response<Buffer>,
) -> std::result::Result<Option<Retention>, &'static str> {
    let text = |name| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    let (Some(mode), Some(until)) = (
        text("x-amz-object-lock-mode"),
        text("x-amz-object-lock-retain-until-date"),
    ) else {
        return Ok(None);
    };
    let mode = match mode.to_ascii_uppercase().as_str() {
        "GOVERNANCE" => LockMode::Governance,
        "COMPLIANCE" => LockMode::Compliance,
        _ => return Err("the server named an unknown Object Lock mode"),
    };
    let until = until
        .parse::<jiff::Timestamp>()
        .map_err(|_| "the server sent a retain-until date that does not parse")?;
    Ok(Some(Retention { mode, until }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(headers: &[(&str, &str)]) -> Response<Buffer> {
        let mut response = Response::builder();
        for (name, value) in headers {
            response = response.header(*name, *value);
        }
        response.body(Buffer::new()).unwrap()
    }

    #[test]
    fn retention_is_read_from_head_headers() {
        let locked = head(&[
            ("x-amz-object-lock-mode", "GOVERNANCE"),
            (
                "x-amz-object-lock-retain-until-date",
                "2026-12-05T18:09:13.603727Z",
            ),
        ]);
        let r = retention_in(&locked).unwrap().unwrap();
        assert_eq!(r.mode, LockMode::Governance);
        assert_eq!(r.until.as_second(), 1_796_494_153);
        assert_eq!(retention_in(&head(&[])).unwrap(), None);
        let odd = head(&[
            ("x-amz-object-lock-mode", "FOREVER"),
            (
                "x-amz-object-lock-retain-until-date",
                "2026-12-05T00:00:00Z",
            ),
        ]);
        assert!(retention_in(&odd).is_err());
    }

    /// Expiry goes by the server's clock; without one, a retention is taken as running.
    #[test]
    fn a_retention_runs_until_the_servers_clock_passes_it() {
        let until: jiff::Timestamp = "2026-12-05T00:00:00Z".parse().unwrap();
        let retention = Some(Retention {
            mode: LockMode::Compliance,
            until,
        });
        let at = |now: &str| Retained {
            retention,
            server_time: Some(now.parse().unwrap()),
        };
        assert_eq!(at("2026-12-04T23:59:59Z").locked_until(), Some(until));
        assert_eq!(at("2026-12-05T00:00:00Z").locked_until(), None);
        let no_date = Retained {
            retention,
            server_time: None,
        };
        assert_eq!(no_date.locked_until(), Some(until));
    }
}
