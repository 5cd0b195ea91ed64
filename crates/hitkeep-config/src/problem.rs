//! Problems found in the configuration: what is wrong, where it came from, and how to fix it.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use crate::key::Key;

/// Where a setting's value came from.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "detail", rename_all = "kebab-case")]
pub enum Origin {
    /// HitKeep's built-in default.
    Default,
    /// The config file (TOML, or HitKeep's YAML) at this path.
    File(PathBuf),
    /// A `HITKEEP_*` environment variable.
    Env,
    /// A command-line flag.
    Flag,
    /// Derived from other settings, for the reason given.
    Inferred(String),
    /// Read from the file a `_FILE` setting names (`HITKEEP_S3_SECRET_ACCESS_KEY_FILE`).
    SecretFile(PathBuf),
}

impl Origin {
    /// The origin in words, naming the variable or flag of `key`: `env HITKEEP_S3_REGION`.
    pub fn describe(&self, key: Key) -> String {
        match self {
            Origin::Default => "default".to_owned(),
            Origin::File(path) => format!("config file {}", path.display()),
            Origin::Env => format!("env {}", key.env()),
            Origin::Flag => format!("flag --{}", key.flag()),
            Origin::Inferred(why) => format!("inferred: {why}"),
            Origin::SecretFile(path) => format!("file {}", path.display()),
        }
    }
}

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// HitKeep refuses to run.
    Error,
    /// HitKeep runs, but probably not as meant.
    Warning,
}

/// One thing wrong with the configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[non_exhaustive]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// The setting at fault, when there is one.
    pub key: Option<Key>,
    /// The offending value, already masked or redacted as the setting requires.
    pub value: Option<String>,
    /// Where that value came from.
    pub origin: Option<Origin>,
    /// What is wrong.
    pub message: String,
    /// What to do about it.
    pub fix: String,
}

impl Serialize for Key {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.env())
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let label = match self.severity {
            Severity::Error => "error",
            Severity::Warning => "warning",
        };
        write!(f, "{label}: ")?;
        if let Some(key) = self.key {
            write!(f, "{key}")?;
            // An unset setting has no value and no origin worth naming.
            if let Some(value) = &self.value {
                write!(f, " = {value:?}")?;
                if let Some(origin) = &self.origin {
                    write!(f, " ({})", origin.describe(key))?;
                }
            }
            write!(f, ": ")?;
        }
        write!(f, "{}\n  fix: {}", self.message, self.fix)
    }
}

/// The configuration cannot be used. Holds every error found (not just the first) and the warnings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// Problems that stop HitKeep from running.
    pub errors: Vec<Problem>,
    /// Problems worth knowing about.
    pub warnings: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.errors.len();
        write!(
            f,
            "the configuration has {n} error{}",
            if n == 1 { "" } else { "s" }
        )?;
        for problem in self.errors.iter().chain(&self.warnings) {
            write!(f, "\n{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}
