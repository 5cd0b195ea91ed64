//! Where backups and archives live: a local directory or an S3 bucket and prefix.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A destination for backups or archives, parsed and checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Location {
    /// A directory on this machine.
    Local(PathBuf),
    /// A prefix in an S3 bucket.
    S3(S3Location),
}

/// `s3://bucket/prefix`, with a bucket name that S3 accepts and a normalised prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Location {
    bucket: String,
    prefix: String,
}

impl S3Location {
    /// The bucket name.
    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    /// The prefix inside the bucket: no leading or trailing `/`, no empty segments; `""` for the bucket root.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Whether one location lies inside the other (or both are the same).
    fn overlaps(&self, other: &S3Location) -> bool {
        self.bucket == other.bucket && segments_nest(&self.prefix, &other.prefix)
    }
}

fn segments_nest(a: &str, b: &str) -> bool {
    let (a, b): (Vec<&str>, Vec<&str>) = (segments(a).collect(), segments(b).collect());
    let n = a.len().min(b.len());
    a[..n] == b[..n]
}

fn segments(prefix: &str) -> impl Iterator<Item = &str> {
    prefix.split('/').filter(|s| !s.is_empty())
}

impl Location {
    /// Whether `self` and `other` share storage: the same place, or one inside the other.
    /// Backups and archives must not, or pruning one would delete the other.
    pub fn overlaps(&self, other: &Location) -> bool {
        match (self, other) {
            (Location::S3(a), Location::S3(b)) => a.overlaps(b),
            (Location::Local(a), Location::Local(b)) => {
                let (a, b) = (normalise_local(a), normalise_local(b));
                a.starts_with(&b) || b.starts_with(&a)
            }
            _ => false,
        }
    }

    /// Whether this is an S3 location.
    pub fn is_s3(&self) -> bool {
        matches!(self, Location::S3(_))
    }
}

/// Lexical normalisation (`a/./b/` → `a/b`): enough to compare two configured paths without touching disk.
fn normalise_local(path: &Path) -> PathBuf {
    path.components()
        .filter(|c| !matches!(c, std::path::Component::CurDir))
        .collect()
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Local(path) => write!(f, "{}", path.display()),
            Location::S3(s3) => write!(f, "{s3}"),
        }
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.prefix.is_empty() {
            write!(f, "s3://{}", self.bucket)
        } else {
            write!(f, "s3://{}/{}", self.bucket, self.prefix)
        }
    }
}

/// Why a location string was refused. The message says what a good value looks like.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LocationError {
    /// Nothing was given.
    #[error(
        "the location is empty: give a directory such as /var/lib/hitkeep/backups or s3://my-bucket/hitkeep/backups"
    )]
    Empty,
    /// `s3://` with no bucket.
    #[error(
        "no bucket after s3:// : write s3://BUCKET/PREFIX, e.g. s3://my-bucket/hitkeep/backups"
    )]
    MissingBucket,
    /// The bucket name breaks S3's naming rules.
    #[error("bucket name {bucket:?} is not valid: {reason}")]
    InvalidBucket {
        /// The bucket as given.
        bucket: String,
        /// Which rule it breaks.
        reason: &'static str,
    },
    /// A `.` or `..` segment in the prefix.
    #[error(
        "the prefix {prefix:?} contains a '.' or '..' segment: S3 keys are not paths, write the prefix out in full"
    )]
    RelativePrefix {
        /// The prefix as given.
        prefix: String,
    },
    /// `s3:` without the two slashes, which would otherwise be a local folder named `s3:`.
    #[error("{given:?} is not an S3 URL: write s3://BUCKET/PREFIX, with two slashes")]
    MalformedS3 {
        /// The location as given.
        given: String,
    },
    /// A URL scheme other than `s3://` or `file://`.
    #[error(
        "unsupported scheme {scheme:?}: use a local directory or s3://BUCKET/PREFIX (GCS, Azure and others are not supported)"
    )]
    UnsupportedScheme {
        /// The scheme as given.
        scheme: String,
    },
}

impl FromStr for Location {
    type Err = LocationError;

    fn from_str(raw: &str) -> Result<Self, Self::Err> {
        let trimmed = raw.trim();
        if trimmed.is_empty() {
            return Err(LocationError::Empty);
        }
        let lower = trimmed.to_ascii_lowercase();
        if lower.starts_with("s3:") && !lower.starts_with("s3://") {
            return Err(LocationError::MalformedS3 {
                given: trimmed.to_owned(),
            });
        }
        match trimmed.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("s3") => {
                parse_s3(rest).map(Location::S3)
            }
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => {
                if rest.is_empty() {
                    Err(LocationError::Empty)
                } else {
                    Ok(Location::Local(PathBuf::from(rest)))
                }
            }
            Some((scheme, _)) if is_scheme(scheme) => Err(LocationError::UnsupportedScheme {
                scheme: scheme.to_owned(),
            }),
            _ => Ok(Location::Local(PathBuf::from(trimmed))),
        }
    }
}

fn is_scheme(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

fn parse_s3(rest: &str) -> Result<S3Location, LocationError> {
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(LocationError::MissingBucket);
    }
    check_bucket(bucket).map_err(|reason| LocationError::InvalidBucket {
        bucket: bucket.to_owned(),
        reason,
    })?;
    let parts: Vec<&str> = segments(prefix).collect();
    if parts.iter().any(|p| *p == "." || *p == "..") {
        return Err(LocationError::RelativePrefix {
            prefix: prefix.to_owned(),
        });
    }
    Ok(S3Location {
        bucket: bucket.to_owned(),
        prefix: parts.join("/"),
    })
}

/// S3's general-purpose bucket naming rules, so a typo fails here rather than as a 400 from the server.
fn check_bucket(bucket: &str) -> Result<(), &'static str> {
    if !(3..=63).contains(&bucket.len()) {
        return Err("bucket names are 3 to 63 characters long");
    }
    if bucket.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err("bucket names are lowercase; S3 does not accept capital letters");
    }
    if !bucket
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-')
    {
        return Err("bucket names use only lowercase letters, digits, '.' and '-'");
    }
    let edge_ok = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    if !edge_ok(bucket.as_bytes()[0]) || !edge_ok(bucket.as_bytes()[bucket.len() - 1]) {
        return Err("bucket names begin and end with a letter or digit");
    }
    if bucket.contains("..") || bucket.contains(".-") || bucket.contains("-.") {
        return Err("bucket names cannot have '..', '.-' or '-.'");
    }
    if bucket.parse::<Ipv4Addr>().is_ok() {
        return Err("bucket names cannot look like an IP address");
    }
    if bucket.starts_with("xn--")
        || bucket.starts_with("sthree-")
        || bucket.starts_with("amzn-s3-demo-")
    {
        return Err("bucket names cannot start with 'xn--', 'sthree-' or 'amzn-s3-demo-'");
    }
    if bucket.ends_with("-s3alias")
        || bucket.ends_with("--ol-s3")
        || bucket.ends_with(".mrap")
        || bucket.ends_with("--x-s3")
    {
        return Err("bucket names cannot end with '-s3alias', '--ol-s3', '.mrap' or '--x-s3'");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s3(s: &str) -> (String, String) {
        match s.parse::<Location>().unwrap() {
            Location::S3(l) => (l.bucket, l.prefix),
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn s3_scheme_is_case_insensitive_and_prefix_normalised() {
        assert_eq!(
            s3("s3://my-bucket/hitkeep/backups"),
            ("my-bucket".into(), "hitkeep/backups".into())
        );
        assert_eq!(
            s3("S3://my-bucket//hitkeep///backups/"),
            ("my-bucket".into(), "hitkeep/backups".into())
        );
        assert_eq!(s3("  s3://my-bucket  "), ("my-bucket".into(), "".into()));
        assert_eq!(s3("s3://my-bucket/"), ("my-bucket".into(), "".into()));
        assert_eq!(s3("s3://a.b-c/x").0, "a.b-c");
    }

    #[test]
    fn local_paths() {
        assert_eq!(
            "/var/lib/x".parse::<Location>().unwrap(),
            Location::Local("/var/lib/x".into())
        );
        assert_eq!(
            "file:///tmp/x".parse::<Location>().unwrap(),
            Location::Local("/tmp/x".into())
        );
        assert_eq!(
            "backups".parse::<Location>().unwrap(),
            Location::Local("backups".into())
        );
    }

    #[test]
    fn rejects_bad_locations() {
        for bad in [
            "",
            "  ",
            "s3://",
            "s3:///prefix",
            "s3://ab",
            "s3://My-Bucket/x",
            "s3://my_bucket",
            "s3://-bucket",
            "s3://bucket-",
            "s3://a..b",
            "s3://192.168.1.1",
            "s3://xn--bucket",
            "s3://bucket-s3alias",
            "s3://bucket/../x",
            "s3://bucket/./x",
            "gs://bucket/x",
            "s3:/hitkeep/backups",
            "S3:bucket/x",
            "https://bucket.s3.amazonaws.com/x",
            &format!("s3://{}", "a".repeat(64)),
        ] {
            assert!(bad.parse::<Location>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn overlap() {
        let l = |s: &str| s.parse::<Location>().unwrap();
        assert!(l("s3://bkt/hitkeep").overlaps(&l("s3://bkt/hitkeep/backups")));
        assert!(l("s3://bkt/x/").overlaps(&l("S3://bkt/x")));
        assert!(l("s3://bkt").overlaps(&l("s3://bkt/archive")));
        assert!(!l("s3://bkt/backups").overlaps(&l("s3://bkt/archive")));
        assert!(!l("s3://bkt/back").overlaps(&l("s3://bkt/backups")));
        assert!(!l("s3://aaa/x").overlaps(&l("s3://bkt/x")));
        assert!(l("/data/x").overlaps(&l("/data/x/./y")));
        assert!(!l("/data/x").overlaps(&l("/data/xy")));
        assert!(!l("/data/x").overlaps(&l("s3://data/x")));
    }
}
