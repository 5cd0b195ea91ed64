//! Every setting's name, declared once: its config-file key, its `HITKEEP_*` variable and its flag.

use std::fmt;

/// How a setting's value may be shown in output, logs and errors.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sensitivity {
    /// Shown as it is.
    Plain,
    /// First four characters then `****` (an access key id: enough to tell keys apart).
    Mask,
    /// Never shown: `[redacted]`.
    Redact,
}

macro_rules! keys {
    ($( $(#[$doc:meta])* $variant:ident => $field:literal, $env:literal, $flag:literal, [$($alias:literal),*], $sens:ident; )*) => {
        /// A setting in scope for backups and archives.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[non_exhaustive]
        pub enum Key { $( $(#[$doc])* $variant, )* }

        impl Key {
            /// Every setting, in the order `config show` prints them.
            pub const ALL: &'static [Key] = &[$(Key::$variant),*];

            /// The key in the TOML config file (`db_path`).
            pub fn field(self) -> &'static str { match self { $(Key::$variant => $field,)* } }

            /// The environment variable (`HITKEEP_DB_PATH`).
            pub fn env(self) -> &'static str { match self { $(Key::$variant => $env,)* } }

            /// The long flag without dashes (`db-path`), as HitKeep derives it from the variable.
            pub fn flag(self) -> &'static str { match self { $(Key::$variant => $flag,)* } }

            /// Deprecated flag spellings HitKeep still accepts (`db` for `db-path`).
            pub fn flag_aliases(self) -> &'static [&'static str] { match self { $(Key::$variant => &[$($alias),*],)* } }

            /// Whether the value may be printed.
            pub fn sensitivity(self) -> Sensitivity { match self { $(Key::$variant => Sensitivity::$sens,)* } }
        }
    };
}

keys! {
    /// The shared (control-plane) DuckDB file.
    DbPath => "db_path", "HITKEEP_DB_PATH", "db-path", ["db"], Plain;
    /// Root of the per-tenant databases (`{data}/tenants/{uuid}/hitkeep.db`).
    DataPath => "data_path", "HITKEEP_DATA_PATH", "data-path", [], Plain;
    /// Where retention archives go: a directory or `s3://bucket/prefix`.
    ArchivePath => "archive_path", "HITKEEP_ARCHIVE_PATH", "archive-path", [], Plain;
    /// Retention applied to newly created sites, in days (0: none).
    DataRetentionDays => "data_retention_days", "HITKEEP_DATA_RETENTION_DAYS", "data-retention-days", ["retention-days"], Plain;
    /// Where snapshots go; empty disables backups.
    BackupPath => "backup_path", "HITKEEP_BACKUP_PATH", "backup-path", [], Plain;
    /// Minutes between backup cycles.
    BackupInterval => "backup_interval", "HITKEEP_BACKUP_INTERVAL", "backup-interval", [], Plain;
    /// Snapshots kept per database.
    BackupRetention => "backup_retention", "HITKEEP_BACKUP_RETENTION", "backup-retention", [], Plain;
    /// Also keep the newest N cycles, whatever their age (restic's keep-last); 0: off.
    BackupKeepLast => "backup_keep_last", "HITKEEP_BACKUP_KEEP_LAST", "backup-keep-last", [], Plain;
    /// Also keep the newest cycle of each of the last N hours that have one; 0: off.
    BackupKeepHourly => "backup_keep_hourly", "HITKEEP_BACKUP_KEEP_HOURLY", "backup-keep-hourly", [], Plain;
    /// Also keep the newest cycle of each of the last N days (UTC) that have one; 0: off.
    BackupKeepDaily => "backup_keep_daily", "HITKEEP_BACKUP_KEEP_DAILY", "backup-keep-daily", [], Plain;
    /// Also keep the newest cycle of each of the last N ISO weeks that have one; 0: off.
    BackupKeepWeekly => "backup_keep_weekly", "HITKEEP_BACKUP_KEEP_WEEKLY", "backup-keep-weekly", [], Plain;
    /// Also keep the newest cycle of each of the last N months that have one; 0: off.
    BackupKeepMonthly => "backup_keep_monthly", "HITKEEP_BACKUP_KEEP_MONTHLY", "backup-keep-monthly", [], Plain;
    /// Also prune S3 snapshots after each scheduled cycle (off: S3 lifecycle rules are preferred).
    BackupPruneS3 => "backup_prune_s3", "HITKEEP_BACKUP_PRUNE_S3", "backup-prune-s3", [], Plain;
    /// Databases backed up (or restored) at once.
    BackupConcurrency => "backup_concurrency", "HITKEEP_BACKUP_CONCURRENCY", "backup-concurrency", [], Plain;
    /// `full` snapshots (what HitKeep's `IMPORT DATABASE` reads) or `incremental` ones (only what changed).
    BackupMode => "backup_mode", "HITKEEP_BACKUP_MODE", "backup-mode", [], Plain;
    /// age X25519 public keys (`age1…`), separated by commas or spaces: every snapshot is encrypted to
    /// them before it leaves the process. Public, so shown as it is.
    BackupRecipients => "backup_recipients", "HITKEEP_BACKUP_RECIPIENTS", "backup-recipients", [], Plain;
    /// A file of age recipients, one per line (`#` comments), as `age -R` reads it; added to the above.
    BackupRecipientsFile => "backup_recipients_file", "HITKEEP_BACKUP_RECIPIENTS_FILE", "backup-recipients-file", [], Plain;
    /// An age identity file (`AGE-SECRET-KEY-1…`) that opens encrypted snapshots: restore,
    /// `verify -deep`, `export-plain`. A host that only backs up does not need one. Its path is shown,
    /// its content never read into settings.
    BackupIdentityFile => "backup_identity_file", "HITKEEP_BACKUP_IDENTITY_FILE", "backup-identity-file", [], Plain;
    /// Seal each tenant's snapshots to a key of the tenant's own (its private key kept in the backup
    /// location, sealed to the recipients above), so that `hitkeep backup forget-tenant` can make
    /// them unreadable. Needs recipients.
    BackupTenantKeys => "backup_tenant_keys", "HITKEEP_BACKUP_TENANT_KEYS", "backup-tenant-keys", [], Plain;
    /// S3 Object Lock: every object of a snapshot is kept from deletion and overwrite for this many
    /// days after its cycle (by the server's clock), even by someone holding the bucket's keys; 0: off.
    /// The bucket must have Object Lock enabled.
    BackupObjectLockDays => "backup_object_lock_days", "HITKEEP_BACKUP_OBJECT_LOCK_DAYS", "backup-object-lock-days", [], Plain;
    /// `governance` (the default: an account allowed `s3:BypassGovernanceRetention` can still lift the
    /// lock) or `compliance` (nobody can, not even the bucket's root account, until the days pass).
    BackupObjectLockMode => "backup_object_lock_mode", "HITKEEP_BACKUP_OBJECT_LOCK_MODE", "backup-object-lock-mode", [], Plain;
    /// Pinged with a GET after each successful backup cycle: a healthchecks.io, Uptime Kuma or Cronitor ping URL.
    /// Its path or query holds a token, so it is shown as `https://host/…` only.
    BackupHeartbeatUrl => "backup_heartbeat_url", "HITKEEP_BACKUP_HEARTBEAT_URL", "backup-heartbeat-url", [], Redact;
    /// A file holding the heartbeat URL, instead of the URL itself.
    BackupHeartbeatUrlFile => "backup_heartbeat_url_file", "HITKEEP_BACKUP_HEARTBEAT_URL_FILE", "backup-heartbeat-url-file", [], Plain;
    /// Sent a POST with a short JSON body when a backup cycle fails (a monitor's failure URL or a webhook).
    BackupFailureUrl => "backup_failure_url", "HITKEEP_BACKUP_FAILURE_URL", "backup-failure-url", [], Redact;
    /// A file holding the failure URL, instead of the URL itself.
    BackupFailureUrlFile => "backup_failure_url_file", "HITKEEP_BACKUP_FAILURE_URL_FILE", "backup-failure-url-file", [], Plain;
    /// DuckDB's memory limit for backups, restores and archive runs (`2GB`, `512MiB`); unset: DuckDB's 80% of RAM.
    DuckdbMemoryLimit => "duckdb_memory_limit", "HITKEEP_DUCKDB_MEMORY_LIMIT", "duckdb-memory-limit", [], Plain;
    /// DuckDB worker threads for the same; unset: one per core.
    DuckdbThreads => "duckdb_threads", "HITKEEP_DUCKDB_THREADS", "duckdb-threads", [], Plain;
    /// Static S3 access key id.
    S3AccessKeyId => "s3_access_key_id", "HITKEEP_S3_ACCESS_KEY_ID", "s3-access-key-id", [], Mask;
    /// Static S3 secret access key.
    S3SecretAccessKey => "s3_secret_access_key", "HITKEEP_S3_SECRET_ACCESS_KEY", "s3-secret-access-key", [], Redact;
    /// A file holding the secret access key (a Docker or Kubernetes secret), instead of the key itself.
    S3SecretAccessKeyFile => "s3_secret_access_key_file", "HITKEEP_S3_SECRET_ACCESS_KEY_FILE", "s3-secret-access-key-file", [], Plain;
    /// STS session token that goes with temporary keys.
    S3SessionToken => "s3_session_token", "HITKEEP_S3_SESSION_TOKEN", "s3-session-token", [], Redact;
    /// A file holding the session token, instead of the token itself.
    S3SessionTokenFile => "s3_session_token_file", "HITKEEP_S3_SESSION_TOKEN_FILE", "s3-session-token-file", [], Plain;
    /// Region used to sign requests (`auto` for R2).
    S3Region => "s3_region", "HITKEEP_S3_REGION", "s3-region", [], Plain;
    /// Custom endpoint for MinIO, R2, Garage and other S3-compatible servers.
    S3Endpoint => "s3_endpoint", "HITKEEP_S3_ENDPOINT", "s3-endpoint", [], Plain;
    /// `path` or `vhost` addressing.
    S3UrlStyle => "s3_url_style", "HITKEEP_S3_URL_STYLE", "s3-url-style", [], Plain;
    /// HTTPS (true) or plain HTTP (false) for a custom endpoint.
    S3UseSsl => "s3_use_ssl", "HITKEEP_S3_USE_SSL", "s3-use-ssl", [], Plain;
    /// The integrity header on uploads: `auto` (CRC32C, Content-MD5 where refused), `crc32c`, `md5` or `off`.
    S3Checksum => "s3_checksum", "HITKEEP_S3_CHECKSUM", "s3-checksum", [], Plain;
    /// Where the scheduler serves /healthz, /metrics and the backup status (off when unset).
    HttpAddr => "http_addr", "HITKEEP_HTTP_ADDR", "http-addr", [], Plain;
    /// Log verbosity.
    LogLevel => "log_level", "HITKEEP_LOG_LEVEL", "log-level", [], Plain;
    /// Log output: `text` or `json`.
    LogFormat => "log_format", "HITKEEP_LOG_FORMAT", "log-format", [], Plain;
}

impl Key {
    /// Looks a setting up by its config-file key.
    pub fn from_field(field: &str) -> Option<Key> {
        Key::ALL.iter().copied().find(|k| k.field() == field)
    }

    /// Looks a setting up by its environment variable.
    pub fn from_env(name: &str) -> Option<Key> {
        Key::ALL.iter().copied().find(|k| k.env() == name)
    }

    /// The setting that names a file holding this secret (`HITKEEP_S3_SECRET_ACCESS_KEY_FILE` for
    /// `HITKEEP_S3_SECRET_ACCESS_KEY`), for the secrets that may come from one.
    pub fn file_key(self) -> Option<Key> {
        SECRET_FILES
            .iter()
            .find_map(|&(secret, file)| (secret == self).then_some(file))
    }

    /// The secret a `_FILE` setting holds: the inverse of [`Key::file_key`].
    pub fn secret_in_file(self) -> Option<Key> {
        SECRET_FILES
            .iter()
            .find_map(|&(secret, file)| (file == self).then_some(secret))
    }

    /// Masks or redacts `value` as this setting requires.
    pub fn display_value(self, value: &str) -> String {
        crate::secret::display_with(self.sensitivity(), value)
    }
}

impl fmt::Display for Key {
    /// `HITKEEP_DB_PATH (--db-path)`: how errors name a setting, so both spellings can be searched for.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (--{})", self.env(), self.flag())
    }
}

/// Secrets that may be given as a file that holds them, and the setting naming that file. Containers
/// mount secrets as files, and a file keeps the secret out of `ps` and of the environment.
const SECRET_FILES: [(Key, Key); 4] = [
    (Key::S3SecretAccessKey, Key::S3SecretAccessKeyFile),
    (Key::S3SessionToken, Key::S3SessionTokenFile),
    (Key::BackupHeartbeatUrl, Key::BackupHeartbeatUrlFile),
    (Key::BackupFailureUrl, Key::BackupFailureUrlFile),
];

/// `HITKEEP_CONFIG`: the config file to read (TOML, or HitKeep's YAML), when `--config` is not given.
/// HitKeep itself has no such variable.
pub const CONFIG_FILE_ENV: &str = "HITKEEP_CONFIG";

#[cfg(test)]
mod tests {
    use super::*;

    /// HitKeep derives every flag from its variable; ours must agree, or the guide's flags break.
    #[test]
    fn flags_and_fields_derive_from_env_names() {
        for key in Key::ALL {
            let stem = key.env().strip_prefix("HITKEEP_").unwrap().to_lowercase();
            assert_eq!(key.field(), stem);
            assert_eq!(key.flag(), stem.replace('_', "-"));
            assert_eq!(Key::from_env(key.env()), Some(*key));
            assert_eq!(Key::from_field(key.field()), Some(*key));
        }
    }
}
