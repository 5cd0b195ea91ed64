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
}
