//! Secrets that cannot be printed by accident.

use std::fmt;

use crate::key::Sensitivity;

/// A secret (secret access key, session token). `Debug` and `Display` print `[redacted]`; the value is
/// reachable only through [`Secret::expose`], so every place that uses it is easy to find.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for handing to a signer. Never log or format the result.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(REDACTED)
    }
}

/// An access key id: not secret on its own, but printed masked (`AKIA****`) as HitKeep does, enough to
/// tell two keys apart without publishing one.
#[derive(Clone, PartialEq, Eq)]
pub struct AccessKeyId(String);

impl AccessKeyId {
    /// Wraps an access key id.
    pub fn new(value: impl Into<String>) -> Self {
        AccessKeyId(value.into())
    }

    /// The full key id, for handing to a signer.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask(&self.0))
    }
}

impl fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&mask(&self.0))
    }
}

/// A URL whose path or query is a secret: a healthchecks.io ping UUID, a Slack or Discord webhook path,
/// a token parameter. `Debug` and `Display` show only where it points, `https://hc-ping.com/…` (scheme,
/// host and any port; no user, path or query); the whole URL is reachable only through
/// [`SecretUrl::expose`], for the request itself.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretUrl(url::Url);

impl SecretUrl {
    /// The whole URL, token included, for making the request. Never log or format the result (nor an
    /// HTTP client's error that quotes it).
    pub fn expose(&self) -> &str {
        self.0.as_str()
    }
}

/// Why a URL setting was refused. The text never quotes the URL, which may hold a token.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretUrlError {
    /// Not a URL at all (often the scheme is missing).
    #[error("not a URL ({0})")]
    Parse(url::ParseError),
    /// A URL, but not one an HTTP request can be sent to.
    #[error("not an http:// or https:// URL")]
    Scheme,
}

impl std::str::FromStr for SecretUrl {
    type Err = SecretUrlError;

    fn from_str(text: &str) -> Result<Self, SecretUrlError> {
        let url = url::Url::parse(text.trim()).map_err(SecretUrlError::Parse)?;
        // http and https are "special" schemes to the url crate, which already requires them to
        // have a non-empty host.
        match url.scheme() {
            "http" | "https" => Ok(SecretUrl(url)),
            _ => Err(SecretUrlError::Scheme),
        }
    }
}

impl fmt::Display for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = self.0.host_str().unwrap_or_default();
        write!(f, "{}://{host}", self.0.scheme())?;
        if let Some(port) = self.0.port() {
            write!(f, ":{port}")?;
        }
        f.write_str("/…")
    }
}

impl fmt::Debug for SecretUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

const REDACTED: &str = "[redacted]";

/// HitKeep's mask: the first four characters then `****`; four or fewer give just `****`.
fn mask(value: &str) -> String {
    match value.char_indices().nth(4) {
        Some((end, _)) => format!("{}****", &value[..end]),
        None => "****".to_owned(),
    }
}

pub(crate) fn display_with(sensitivity: Sensitivity, value: &str) -> String {
    match sensitivity {
        Sensitivity::Plain => value.to_owned(),
        Sensitivity::Mask => mask(value),
        Sensitivity::Redact if value.is_empty() => String::new(),
        Sensitivity::Redact => REDACTED.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_like_hitkeep() {
        assert_eq!(mask("AKIA123456"), "AKIA****");
        assert_eq!(mask("AKIA"), "****");
        assert_eq!(mask(""), "****");
        assert_eq!(mask("ÄÖÜßxyz"), "ÄÖÜß****");
    }

    #[test]
    fn secrets_never_format() {
        let s = Secret::new("wJalrXUtnFEMI/K7MDENG");
        assert_eq!(
            format!("{s} {s:?} {s:#?}"),
            "[redacted] [redacted] [redacted]"
        );
        let k = AccessKeyId::new("AKIAIOSFODNN7EXAMPLE");
        assert_eq!(format!("{k} {k:?}"), "AKIA**** AKIA****");
    }

    #[test]
    fn secret_urls_show_only_where_they_point() {
        for (text, shown) in [
            (
                "https://hc-ping.com/5c6644da-ef00-45e6-825d-c755d19d7f9f",
                "https://hc-ping.com/…",
            ),
            (
                "http://user:pw@kuma.lan:3001/api/push/Tok3n?status=up",
                "http://kuma.lan:3001/…",
            ),
            (
                "https://hooks.slack.com/services/T0/B0/xyz#frag",
                "https://hooks.slack.com/…",
            ),
            ("http://[::1]:8080/ping/abc", "http://[::1]:8080/…"),
        ] {
            let url: SecretUrl = text.parse().unwrap();
            assert_eq!(url.expose(), text);
            assert_eq!(
                format!("{url} {url:?} {url:#?}"),
                format!("{shown} {shown} {shown}")
            );
        }
        for bad in [
            "hc-ping.com/abc",
            "ftp://example.com/abc",
            "https://",
            "mailto:ops@example.com",
            "http://exa mple.com/x",
        ] {
            let e = bad.parse::<SecretUrl>().unwrap_err();
            assert!(
                !e.to_string().contains("example") && !e.to_string().contains("abc"),
                "{e}"
            );
        }
    }
}
