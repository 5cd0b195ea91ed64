//! The one set of S3 settings that backups, archives and restores share.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use crate::secret::{AccessKeyId, Secret};

/// Everything needed to talk to an S3-compatible service: AWS S3, MinIO, Garage or Cloudflare R2.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct S3Settings {
    /// Static keys, or the AWS credential chain.
    pub credentials: Credentials,
    /// The signing region; `auto` for R2.
    pub region: String,
    /// A custom endpoint; `None` means AWS S3 for `region`.
    pub endpoint: Option<Endpoint>,
    /// Path-style or virtual-host-style requests, as resolved (given, or inferred from the endpoint).
    pub url_style: UrlStyle,
    /// HTTPS (true) or plain HTTP (false), as resolved (an endpoint's own scheme wins over the default).
    pub use_ssl: bool,
    /// The integrity header uploads carry.
    pub checksum: S3Checksum,
}

impl S3Settings {
    /// The endpoint URL to send requests to, with its scheme: `http://127.0.0.1:9000`. `None` for AWS S3.
    pub fn endpoint_url(&self) -> Option<String> {
        self.endpoint.as_ref().map(|e| e.url(self.use_ssl))
    }

    /// A short, printable name of the service: the endpoint URL, or `AWS S3 (eu-central-1)`.
    pub fn service_name(&self) -> String {
        self.endpoint_url()
            .unwrap_or_else(|| format!("AWS S3 ({})", self.region))
    }
}

/// How requests are signed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Credentials {
    /// Keys given in the settings.
    Static {
        /// The access key id.
        access_key_id: AccessKeyId,
        /// The secret access key.
        secret_access_key: Secret,
        /// The STS session token that goes with temporary keys.
        session_token: Option<Secret>,
    },
    /// The AWS credential chain: `AWS_*` variables, shared profile, web identity, ECS or instance role.
    Chain,
}

/// Path-style (`host/bucket/key`) or virtual-host-style (`bucket.host/key`) requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlStyle {
    /// `https://host/bucket/key`: MinIO, Garage, IP addresses and endpoints with a port.
    Path,
    /// `https://bucket.host/key`: AWS S3's default.
    VirtualHost,
}

impl FromStr for UrlStyle {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "path" => Ok(UrlStyle::Path),
            "vhost" => Ok(UrlStyle::VirtualHost),
            _ => Err(()),
        }
    }
}

impl fmt::Display for UrlStyle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlStyle::Path => "path",
            UrlStyle::VirtualHost => "vhost",
        })
    }
}

/// The integrity header every upload request carries, so that a body damaged on the way is refused by
/// the server rather than stored. Requests are signed without their payload, so without one a damaged
/// body would be stored as sent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum S3Checksum {
    /// `x-amz-checksum-crc32c`, switching to `Content-MD5` for the rest of the run when the service
    /// refuses the header (Backblaze B2, Wasabi, older R2 and Ceph gateways).
    #[default]
    Auto,
    /// `x-amz-checksum-crc32c`, never switched: a refusal is an error.
    Crc32c,
    /// `Content-MD5` on every PUT and part.
    Md5,
    /// No integrity header: a body damaged on the way can be stored (`backup verify --deep` finds it).
    Off,
}

impl S3Checksum {
    /// The values `HITKEEP_S3_CHECKSUM` takes, for messages.
    pub const ALLOWED: &'static str = "auto, crc32c, md5 or off";
}

impl FromStr for S3Checksum {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s.to_ascii_lowercase().as_str() {
            "auto" => Ok(S3Checksum::Auto),
            "crc32c" => Ok(S3Checksum::Crc32c),
            "md5" => Ok(S3Checksum::Md5),
            "off" => Ok(S3Checksum::Off),
            _ => Err(()),
        }
    }
}

impl fmt::Display for S3Checksum {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            S3Checksum::Auto => "auto",
            S3Checksum::Crc32c => "crc32c",
            S3Checksum::Md5 => "md5",
            S3Checksum::Off => "off",
        })
    }
}

/// A custom S3 endpoint: `host`, `host:port` or `http(s)://host[:port]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Endpoint {
    scheme: Option<Scheme>,
    host: String,
    port: Option<u16>,
}

/// The scheme written in an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scheme {
    /// `http://`
    Http,
    /// `https://`
    Https,
}

impl Endpoint {
    /// The scheme, when the endpoint was written with one.
    pub fn scheme(&self) -> Option<Scheme> {
        self.scheme
    }

    /// The host name or IP address (IPv6 in brackets).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port, when one was given.
    pub fn port(&self) -> Option<u16> {
        self.port
    }

    /// An IP address or `localhost`: hosts where a bucket cannot become a subdomain.
    pub fn is_ip_or_localhost(&self) -> bool {
        let bare = self.host.trim_start_matches('[').trim_end_matches(']');
        bare.parse::<IpAddr>().is_ok()
            || bare.eq_ignore_ascii_case("localhost")
            || bare.ends_with(".localhost")
    }

    /// Cloudflare R2 (`<account>.r2.cloudflarestorage.com`, including the `eu.` and `fedramp.` jurisdictions).
    pub fn is_r2(&self) -> bool {
        self.host
            .to_ascii_lowercase()
            .ends_with(".r2.cloudflarestorage.com")
    }

    /// The URL with the scheme `use_ssl` implies when none was written.
    pub fn url(&self, use_ssl: bool) -> String {
        let scheme = match self.scheme {
            Some(Scheme::Http) => "http",
            Some(Scheme::Https) => "https",
            None if use_ssl => "https",
            None => "http",
        };
        match self.port {
            Some(port) => format!("{scheme}://{}:{port}", self.host),
            None => format!("{scheme}://{}", self.host),
        }
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.scheme {
            Some(_) => f.write_str(&self.url(true)),
            None => match self.port {
                Some(port) => write!(f, "{}:{port}", self.host),
                None => f.write_str(&self.host),
            },
        }
    }
}

/// Why an endpoint was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EndpointError {
    /// A scheme other than http or https.
    #[error("unsupported scheme {0:?}: write host, host:port, http://host:port or https://host")]
    Scheme(String),
    /// A path, query or credentials after the host.
    #[error(
        "the endpoint must be only a host and port, without a path, bucket, query or credentials"
    )]
    Extra,
    /// Not a host name, or a bad port.
    #[error("not a host[:port]: {0}")]
    Invalid(String),
}

impl FromStr for Endpoint {
    type Err = EndpointError;

    fn from_str(raw: &str) -> Result<Self, EndpointError> {
        let raw = raw.trim();
        let (scheme, rest) = match raw.split_once("://") {
            Some((s, rest)) if s.eq_ignore_ascii_case("http") => (Some(Scheme::Http), rest),
            Some((s, rest)) if s.eq_ignore_ascii_case("https") => (Some(Scheme::Https), rest),
            Some((s, _)) => return Err(EndpointError::Scheme(s.to_owned())),
            None => (None, raw),
        };
        // A lone trailing slash is harmless; anything else after the host is a mistake (often the bucket).
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(EndpointError::Extra);
        }
        if rest.is_empty() || rest.contains(char::is_whitespace) {
            return Err(EndpointError::Invalid(
                "the host is empty or contains spaces".into(),
            ));
        }
        // The url crate checks host syntax (IDNA, IPv6 brackets) and ports for us.
        let url = url::Url::parse(&format!("http://{rest}"))
            .map_err(|e| EndpointError::Invalid(e.to_string()))?;
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| EndpointError::Invalid("no host".into()))?;
        let explicit_port = rest
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.bytes().all(|b| b.is_ascii_digit()));
        let port = match url.port() {
            Some(0) => return Err(EndpointError::Invalid("port 0 is not a port".into())),
            Some(p) => Some(p),
            // `url` drops a port equal to the scheme's default (80); keep what the user wrote.
            None if explicit_port && !rest.ends_with(']') => Some(80),
            None => None,
        };
        Ok(Endpoint {
            scheme,
            host: host.to_owned(),
            port,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_spellings() {
        let e: Endpoint = "localhost:9000".parse().unwrap();
        assert_eq!(
            (e.scheme(), e.host(), e.port()),
            (None, "localhost", Some(9000))
        );
        assert_eq!(e.url(false), "http://localhost:9000");
        assert_eq!(e.url(true), "https://localhost:9000");
        let e: Endpoint = "HTTP://127.0.0.1:3900/".parse().unwrap();
        assert_eq!(
            (e.scheme(), e.host(), e.port()),
            (Some(Scheme::Http), "127.0.0.1", Some(3900))
        );
        assert_eq!(e.url(true), "http://127.0.0.1:3900");
        let e: Endpoint = "acct.r2.cloudflarestorage.com".parse().unwrap();
        assert!(e.is_r2() && !e.is_ip_or_localhost());
        assert_eq!(e.url(true), "https://acct.r2.cloudflarestorage.com");
        let e: Endpoint = "https://[::1]:9000".parse().unwrap();
        assert!(e.is_ip_or_localhost());
        assert_eq!(e.url(true), "https://[::1]:9000");
        assert_eq!("minio:80".parse::<Endpoint>().unwrap().port(), Some(80));
    }

    #[test]
    fn bad_endpoints() {
        for bad in [
            "",
            "ftp://host",
            "http://",
            "host:port",
            "host:99999",
            "host:0",
            "http://host/bucket",
            "host/bucket",
            "http://user:pw@host",
            "host?x=1",
            "ho st",
            "http://:9000",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn checksum_spellings_round_trip() {
        for (text, want) in [
            ("auto", S3Checksum::Auto),
            ("CRC32C", S3Checksum::Crc32c),
            ("Md5", S3Checksum::Md5),
            ("off", S3Checksum::Off),
        ] {
            assert_eq!(text.parse(), Ok(want));
            assert_eq!(want.to_string(), text.to_ascii_lowercase());
        }
        for bad in ["", "crc32", "sha256", "none", "false"] {
            assert_eq!(bad.parse::<S3Checksum>(), Err(()), "{bad:?}");
        }
    }

    #[test]
    fn url_style_any_case() {
        assert_eq!("PATH".parse(), Ok(UrlStyle::Path));
        assert_eq!("VHost".parse(), Ok(UrlStyle::VirtualHost));
        assert_eq!("virtual".parse::<UrlStyle>(), Err(()));
    }
}
