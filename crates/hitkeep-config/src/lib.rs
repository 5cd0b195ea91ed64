//! HitKeep's backup and archive settings: layered, typed, validated, with secrets that never print.
//!
//! Settings come from four layers, later ones winning: HitKeep's built-in defaults, a config file
//! (`--config FILE` or `HITKEEP_CONFIG`: TOML, or HitKeep's own YAML file when it ends in `.yaml`/`.yml`),
//! `HITKEEP_*` environment variables, and command-line flags. The environment and the YAML file are shared
//! with the HitKeep server, so its settings there are accepted and ignored (see `server.rs`).
//! An empty value counts as unset. [`Config::load`] merges them with figment, then resolves the text into
//! [`Settings`]: a [`Location`] rather than a path string, an [`Endpoint`] rather than a URL string, and so on.
//! Every problem is reported at once, each naming the variable and the flag, the value (masked if secret),
//! where it came from and how to fix it. A bad value is an error, never a silent fallback to the default.
//!
//! ```
//! use hitkeep_config::{Config, Sources, Location};
//!
//! let sources = Sources::with_env([
//!     ("HITKEEP_BACKUP_PATH".to_owned(), "s3://hitkeep/backups".to_owned()),
//!     ("HITKEEP_S3_ENDPOINT".to_owned(), "localhost:9000".to_owned()),
//! ]);
//! let config = Config::load(&sources).unwrap();
//! assert!(matches!(config.settings.backup.location, Some(Location::S3(_))));
//! assert_eq!(config.settings.s3.endpoint_url().as_deref(), Some("https://localhost:9000"));
//! assert_eq!(config.warnings.len(), 1); // path style inferred for an endpoint with a port
//! ```
//!
//! The S3 secret and session token may instead be given as files that hold them
//! (`HITKEEP_S3_SECRET_ACCESS_KEY_FILE`, `HITKEEP_S3_SESSION_TOKEN_FILE`, as containers mount secrets),
//! never both ways at once. So may the notification URLs (`HITKEEP_BACKUP_HEARTBEAT_URL`,
//! `HITKEEP_BACKUP_FAILURE_URL`), which hold a token too and are shown as [`SecretUrl`]s: `https://host/…`.
//!
//! What this crate will not do: read the process environment or argv (callers pass [`Sources`]), touch
//! the network or the disk beyond reading the config file and those secret files, or know how settings
//! are used.

#![deny(missing_docs)]

mod key;
mod load;
mod location;
mod problem;
mod resolve;
mod s3;
mod secret;
mod server;
mod settings;
mod show;
mod suggest;
mod yaml;

use std::collections::BTreeMap;
use std::path::PathBuf;

pub use crate::{
    key::{CONFIG_FILE_ENV, Key, Sensitivity},
    load::Sources,
    location::{Location, LocationError, S3Location},
    problem::{ConfigError, Origin, Problem, Severity},
    s3::{Credentials, Endpoint, EndpointError, S3Checksum, S3Settings, Scheme, UrlStyle},
    secret::{AccessKeyId, Secret, SecretUrl, SecretUrlError},
    settings::{
        BackupKeep, BackupMode, BackupSettings, Concurrency, LockMode, LogFormat, LogLevel,
        LogSettings, ObjectLock, Settings,
    },
};

/// Loaded and validated configuration: the settings, the warnings, and where each value came from.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Config {
    /// The typed settings.
    pub settings: Settings,
    /// Things that work but are probably not what was meant.
    pub warnings: Vec<Problem>,
    /// The config file that was read (TOML or YAML), if any.
    pub config_file: Option<PathBuf>,
    origins: BTreeMap<Key, Origin>,
}

impl Config {
    /// Merges the layers and validates them. Fails with every error found, and the warnings too.
    pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
        let resolved = resolve::resolve(load::load(sources));
        match resolved.settings {
            Some(settings) if resolved.errors.is_empty() => Ok(Config {
                settings,
                warnings: resolved.warnings,
                config_file: sources.config_path(),
                origins: resolved.origins,
            }),
            _ => Err(ConfigError {
                errors: resolved.errors,
                warnings: resolved.warnings,
            }),
        }
    }

    /// Where `key`'s effective value came from.
    pub fn origin(&self, key: Key) -> &Origin {
        self.origins.get(&key).unwrap_or(&Origin::Default)
    }

    /// `key`'s effective value as it may be printed ([`Settings::display_value`]); for a `_FILE`
    /// setting, the file its secret was read from.
    pub fn display_value(&self, key: Key) -> Option<String> {
        match key.secret_in_file() {
            Some(secret) => match self.origin(secret) {
                Origin::SecretFile(path) => Some(path.display().to_string()),
                _ => None,
            },
            None => self.settings.display_value(key),
        }
    }

    /// Warnings for secrets given as command-line flags, for a process that runs for long (the
    /// scheduler): its command line, secret included, is readable in `ps` by every user of the
    /// machine for as long as it runs.
    pub fn secrets_on_command_line(&self) -> Vec<Problem> {
        Key::ALL
            .iter()
            .filter(|&&k| k.sensitivity() == Sensitivity::Redact && *self.origin(k) == Origin::Flag)
            .map(|&key| Problem {
                severity: Severity::Warning,
                key: Some(key),
                value: None,
                origin: Some(Origin::Flag),
                message: format!(
                    "given as the flag --{}, it is visible in `ps` for the scheduler's whole life",
                    key.flag()
                ),
                fix: format!(
                    "use {} (a file only this user can read), or the variable {}",
                    key.file_key().map_or(key.env(), Key::env),
                    key.env()
                ),
            })
            .collect()
    }
}
