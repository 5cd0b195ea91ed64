//! The resolved, typed settings: what the rest of HitKeep sees. No strings to re-parse, no `Option` defaults.

use std::num::NonZeroU32;
use std::path::PathBuf;
use std::time::Duration;

use crate::key::Key;
use crate::location::Location;
use crate::s3::{Credentials, S3Settings};
use crate::secret::SecretUrl;

/// Every setting in scope, validated.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Settings {
    /// The shared (control-plane) DuckDB file.
    pub db_path: PathBuf,
    /// Root of the per-tenant databases.
    pub data_path: PathBuf,
    /// Where retention archives go.
    pub archive: Location,
    /// Retention for newly created sites, in days; 0 means none.
    pub data_retention_days: u32,
    /// Scheduled snapshots.
    pub backup: BackupSettings,
    /// Shared by the backup path, the archive path and restores.
    pub s3: S3Settings,
    /// DuckDB's resources for the databases this process opens.
    pub duckdb: DuckDbSettings,
    /// Logging.
    pub log: LogSettings,
    /// Where the scheduler serves health, metrics and status; `None` (the default) serves nothing.
    pub http_addr: Option<std::net::SocketAddr>,
}

/// Scheduled snapshots.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupSettings {
    /// Where snapshots go; `None` (backups disabled) when `HITKEEP_BACKUP_PATH` is empty.
    pub location: Option<Location>,
    /// Time between cycles; at least a minute.
    pub interval: Duration,
    /// Snapshots kept per database.
    pub retention: NonZeroU32,
    /// Period rules kept on top of `retention`.
    pub keep: BackupKeep,
    /// Prune S3 destinations after scheduled cycles too (local ones always are).
    pub prune_s3: bool,
    /// Databases exported and uploaded (or downloaded and imported) at once.
    pub concurrency: Concurrency,
    /// Full snapshots (the default) or incremental ones.
    pub mode: BackupMode,
    /// age X25519 recipients (`age1…`) every snapshot is encrypted to, each checked to parse; empty:
    /// snapshots are not encrypted.
    pub recipients: Vec<String>,
    /// The file some of `recipients` came from.
    pub recipients_file: Option<PathBuf>,
    /// The age identity file that opens encrypted snapshots, when given (checked to exist, not read).
    pub identity_file: Option<PathBuf>,
    /// Each tenant's snapshots sealed to a key of the tenant's own (only with `recipients`).
    pub tenant_keys: bool,
    /// S3 Object Lock on every object of each snapshot; `None` (the default) when off.
    pub object_lock: Option<ObjectLock>,
    /// Pinged with a GET after each successful cycle (healthchecks.io, Uptime Kuma, Cronitor); `None`
    /// when unset.
    pub heartbeat_url: Option<SecretUrl>,
    /// Sent a POST with a short JSON body when a cycle fails; `None` when unset.
    pub failure_url: Option<SecretUrl>,
}

/// Restic's period rules, kept on top of the newest `retention` cycles; 0 turns a rule off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BackupKeep {
    /// The newest N cycles.
    pub last: u32,
    /// The newest cycle of each of the last N hours that have one.
    pub hourly: u32,
    /// Of each of the last N days (UTC).
    pub daily: u32,
    /// Of each of the last N ISO weeks.
    pub weekly: u32,
    /// Of each of the last N months.
    pub monthly: u32,
}

impl BackupKeep {
    /// Whether every rule is off.
    pub fn is_empty(&self) -> bool {
        *self == BackupKeep::default()
    }
}

/// DuckDB's resources; `None` leaves DuckDB's own default.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DuckDbSettings {
    /// Memory limit in bytes, shared by the databases open at once.
    pub memory_limit: Option<u64>,
    /// Worker threads, shared likewise.
    pub threads: Option<NonZeroU32>,
}

/// Logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct LogSettings {
    /// Verbosity.
    pub level: LogLevel,
    /// Output format.
    pub format: LogFormat,
}

/// Log verbosity, as HitKeep names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    /// Everything, including per-request detail.
    Trace,
    /// Diagnostic detail.
    Debug,
    /// Normal operation.
    Info,
    /// Something looks wrong.
    Warn,
    /// Something failed.
    Error,
}

impl LogLevel {
    /// The level's name as `tracing` filters spell it.
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Trace => "trace",
            LogLevel::Debug => "debug",
            LogLevel::Info => "info",
            LogLevel::Warn => "warn",
            LogLevel::Error => "error",
        }
    }
}

/// How many databases a backup cycle exports (or a restore downloads and imports) at once.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Concurrency {
    /// Ours to choose (`auto`, the default): [`Concurrency::AUTO`], and one more for a cycle whose
    /// databases are all small and held by no server (hitkeep-backup's
    /// `BackupOptions::one_more_when_small`).
    #[default]
    Auto,
    /// Exactly this many, as set.
    Fixed(NonZeroU32),
}

impl Concurrency {
    /// What `auto` starts from.
    pub const AUTO: u32 = 2;

    /// The number set, or [`Concurrency::AUTO`].
    pub fn get(self) -> u32 {
        match self {
            Concurrency::Auto => Concurrency::AUTO,
            Concurrency::Fixed(n) => n.get(),
        }
    }
}

impl std::fmt::Display for Concurrency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Concurrency::Auto => f.write_str("auto"),
            Concurrency::Fixed(n) => write!(f, "{n}"),
        }
    }
}

/// What a backup cycle's snapshots hold.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BackupMode {
    /// Every database exported whole, as `EXPORT DATABASE` writes it: what HitKeep's own
    /// `IMPORT DATABASE` reads.
    #[default]
    Full,
    /// Only the partitions that changed since the previous snapshot, stored once and shared.
    Incremental,
}

impl std::fmt::Display for BackupMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackupMode::Full => "full",
            BackupMode::Incremental => "incremental",
        })
    }
}

/// S3 Object Lock on snapshots: how long, and how firmly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ObjectLock {
    /// Days each snapshot's objects are kept after its cycle, by the server's clock.
    pub days: NonZeroU32,
    /// Who can lift the lock early.
    pub mode: LockMode,
}

impl ObjectLock {
    /// A lock of `days` in `mode`.
    pub fn new(days: NonZeroU32, mode: LockMode) -> ObjectLock {
        ObjectLock { days, mode }
    }
}

/// S3 Object Lock's retention modes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// An account allowed `s3:BypassGovernanceRetention` can still shorten or lift it.
    #[default]
    Governance,
    /// Nobody can shorten or lift it, the bucket's root account included.
    Compliance,
}

impl LockMode {
    /// As S3 writes it: `GOVERNANCE`, `COMPLIANCE`.
    pub fn as_s3(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

impl std::fmt::Display for LockMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            LockMode::Governance => "governance",
            LockMode::Compliance => "compliance",
        })
    }
}

/// Log output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, as HitKeep's own logs.
    Json,
}

impl Settings {
    /// The effective value of `key` as it may be printed: secrets masked or redacted, `None` when unset.
    pub fn display_value(&self, key: Key) -> Option<String> {
        let (access_key, secret, token) = match &self.s3.credentials {
            Credentials::Static {
                access_key_id,
                secret_access_key,
                session_token,
            } => (
                Some(access_key_id.to_string()),
                Some(secret_access_key.to_string()),
                session_token.as_ref().map(|t| t.to_string()),
            ),
            Credentials::Chain => (None, None, None),
        };
        match key {
            Key::DbPath => Some(self.db_path.display().to_string()),
            Key::DataPath => Some(self.data_path.display().to_string()),
            Key::ArchivePath => Some(self.archive.to_string()),
            Key::DataRetentionDays => Some(self.data_retention_days.to_string()),
            Key::BackupPath => self.backup.location.as_ref().map(ToString::to_string),
            Key::BackupInterval => Some((self.backup.interval.as_secs() / 60).to_string()),
            Key::BackupRetention => Some(self.backup.retention.to_string()),
            Key::BackupKeepLast => Some(self.backup.keep.last.to_string()),
            Key::BackupKeepHourly => Some(self.backup.keep.hourly.to_string()),
            Key::BackupKeepDaily => Some(self.backup.keep.daily.to_string()),
            Key::BackupKeepWeekly => Some(self.backup.keep.weekly.to_string()),
            Key::BackupKeepMonthly => Some(self.backup.keep.monthly.to_string()),
            Key::BackupPruneS3 => Some(self.backup.prune_s3.to_string()),
            Key::BackupTenantKeys => Some(self.backup.tenant_keys.to_string()),
            Key::BackupObjectLockDays => Some(
                self.backup
                    .object_lock
                    .map_or(0, |l| l.days.get())
                    .to_string(),
            ),
            Key::BackupObjectLockMode => self.backup.object_lock.map(|l| l.mode.to_string()),
            Key::BackupConcurrency => Some(self.backup.concurrency.to_string()),
            Key::BackupMode => Some(self.backup.mode.to_string()),
            Key::BackupRecipients => {
                (!self.backup.recipients.is_empty()).then(|| self.backup.recipients.join(", "))
            }
            Key::BackupRecipientsFile => self
                .backup
                .recipients_file
                .as_ref()
                .map(|p| p.display().to_string()),
            Key::BackupIdentityFile => self
                .backup
                .identity_file
                .as_ref()
                .map(|p| p.display().to_string()),
            Key::BackupHeartbeatUrl => self.backup.heartbeat_url.as_ref().map(ToString::to_string),
            Key::BackupFailureUrl => self.backup.failure_url.as_ref().map(ToString::to_string),
            Key::DuckdbMemoryLimit => self
                .duckdb
                .memory_limit
                .map(|b| format!("{}MiB", b / (1024 * 1024))),
            Key::DuckdbThreads => self.duckdb.threads.map(|t| t.to_string()),
            Key::S3AccessKeyId => access_key,
            Key::S3SecretAccessKey => secret,
            Key::S3SessionToken => token,
            // Read into the secrets and URLs above; `Config::display_value` shows the file they came from.
            Key::S3SecretAccessKeyFile
            | Key::S3SessionTokenFile
            | Key::BackupHeartbeatUrlFile
            | Key::BackupFailureUrlFile => None,
            Key::S3Region => Some(self.s3.region.clone()),
            Key::S3Endpoint => self.s3.endpoint_url(),
            Key::S3UrlStyle => Some(self.s3.url_style.to_string()),
            Key::S3UseSsl => Some(self.s3.use_ssl.to_string()),
            Key::S3Checksum => Some(self.s3.checksum.to_string()),
            Key::HttpAddr => self.http_addr.map(|a| a.to_string()),
            Key::LogLevel => Some(self.log.level.as_str().to_owned()),
            Key::LogFormat => Some(match self.log.format {
                LogFormat::Text => "text".to_owned(),
                LogFormat::Json => "json".to_owned(),
            }),
        }
    }
}
