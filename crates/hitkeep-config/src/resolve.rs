//! From raw text to typed [`Settings`]: every value is parsed, every problem is collected (never just the
//! first), and nothing falls back to a default silently.

use std::collections::BTreeMap;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::key::Key;
use crate::load::{Raw, RawValue, default_text};
use crate::location::Location;
use crate::problem::{Origin, Problem, Severity};
use crate::s3::{Credentials, Endpoint, S3Checksum, S3Settings, Scheme, UrlStyle};
use crate::secret::{AccessKeyId, Secret, SecretUrl};
use crate::settings::{
    BackupKeep, BackupMode, BackupSettings, Concurrency, DuckDbSettings, LockMode, LogFormat,
    LogLevel, LogSettings, ObjectLock, Settings,
};

/// The outcome of resolving: settings when there were no errors, plus every problem found and each origin.
pub(crate) struct Resolved {
    pub settings: Option<Settings>,
    pub errors: Vec<Problem>,
    pub warnings: Vec<Problem>,
    pub origins: BTreeMap<Key, Origin>,
}

pub(crate) fn resolve(raw: Raw) -> Resolved {
    let mut r = Resolver {
        values: raw.values,
        errors: Vec::new(),
        warnings: Vec::new(),
        inferred: BTreeMap::new(),
    };
    for problem in raw.problems {
        match problem.severity {
            Severity::Error => r.errors.push(problem),
            Severity::Warning => r.warnings.push(problem),
        }
    }
    let settings = r.settings();
    let mut origins: BTreeMap<Key, Origin> = Key::ALL
        .iter()
        .map(|&k| {
            (
                k,
                r.values
                    .get(&k)
                    .map_or(Origin::Default, |v| v.origin.clone()),
            )
        })
        .collect();
    origins.extend(r.inferred);
    let settings = if r.errors.is_empty() { settings } else { None };
    Resolved {
        settings,
        errors: r.errors,
        warnings: r.warnings,
        origins,
    }
}

struct Resolver {
    values: BTreeMap<Key, RawValue>,
    errors: Vec<Problem>,
    warnings: Vec<Problem>,
    inferred: BTreeMap<Key, Origin>,
}

impl Resolver {
    /// The value given for `key`, or its default.
    fn text(&self, key: Key) -> Option<&str> {
        self.values
            .get(&key)
            .map(|v| v.text.as_str())
            .or_else(|| default_text(key))
    }

    /// Whether `key` was set by the user (file, env or flag) rather than left at its default.
    fn is_set(&self, key: Key) -> bool {
        self.values
            .get(&key)
            .is_some_and(|v| v.origin != Origin::Default)
    }

    fn problem(
        &self,
        severity: Severity,
        key: Key,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Problem {
        let raw = self.values.get(&key);
        Problem {
            severity,
            key: Some(key),
            value: self.text(key).map(|t| key.display_value(t)),
            origin: Some(raw.map_or(Origin::Default, |v| v.origin.clone())),
            message: message.into(),
            fix: fix.into(),
        }
    }

    fn error(&mut self, key: Key, message: impl Into<String>, fix: impl Into<String>) {
        let p = self.problem(Severity::Error, key, message, fix);
        self.errors.push(p);
    }

    fn warn(&mut self, key: Key, message: impl Into<String>, fix: impl Into<String>) {
        let p = self.problem(Severity::Warning, key, message, fix);
        self.warnings.push(p);
    }

    /// Parses `key` with `parse`; on failure records an error with `fix` and returns `None`.
    fn parse<T>(
        &mut self,
        key: Key,
        fix: &str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Option<T> {
        let text = self.text(key)?.to_owned();
        match parse(&text) {
            Ok(v) => Some(v),
            Err(why) => {
                self.error(key, why, fix.replace("{env}", key.env()));
                None
            }
        }
    }

    fn settings(&mut self) -> Option<Settings> {
        let db_path = PathBuf::from(self.text(Key::DbPath)?);
        let data_path = PathBuf::from(self.text(Key::DataPath)?);
        let archive = self.location(Key::ArchivePath);
        let backup_location = if self.is_set(Key::BackupPath) {
            self.location(Key::BackupPath).map(Some)
        } else {
            Some(None)
        };
        let data_retention_days = self.parse(
            Key::DataRetentionDays,
            "set a whole number of days, e.g. {env}=365 (0 keeps data forever)",
            |t| int_in(t, 0, 36_500, "days"),
        );
        let interval = self.parse(
            Key::BackupInterval,
            "set a whole number of minutes, at least 1, e.g. {env}=60",
            |t| int_in(t, 1, 525_600, "minutes").map(|m| Duration::from_secs(u64::from(m) * 60)),
        );
        let retention = self.parse(
            Key::BackupRetention,
            "set how many snapshots to keep per database, at least 1, e.g. {env}=24",
            |t| {
                int_in(t, 1, 100_000, "snapshots")
                    .map(|n| NonZeroU32::new(n).expect("range starts at 1"))
            },
        );
        let keep = self.keep();
        let prune_s3 = self.parse(
            Key::BackupPruneS3,
            "use true or false (also 1/0, yes/no, on/off)",
            parse_bool,
        );
        let concurrency = self.parse(
            Key::BackupConcurrency,
            "set how many databases to back up at once, 1 to 64, or auto (the default), e.g. {env}=2",
            |t| match t.trim().eq_ignore_ascii_case("auto") {
                true => Ok(Concurrency::Auto),
                false => int_in(t, 1, 64, "databases")
                    .map(|n| Concurrency::Fixed(NonZeroU32::new(n).expect("range starts at 1"))),
            },
        );
        let mode = self.parse(
            Key::BackupMode,
            "use full (the default: every database whole, what HitKeep's IMPORT DATABASE reads) or incremental (only what changed since the last snapshot)",
            |t| match t.trim().to_ascii_lowercase().as_str() {
                "full" => Ok(BackupMode::Full),
                "incremental" => Ok(BackupMode::Incremental),
                _ => Err("not full or incremental".to_owned()),
            },
        );
        let encryption = self.encryption();
        let tenant_keys = self.tenant_keys(encryption.0.as_ref());
        let object_lock = self.object_lock(backup_location.as_ref());
        let heartbeat_url = self.secret_url(
            Key::BackupHeartbeatUrl,
            "write the whole ping URL the monitor gives, e.g. https://hc-ping.com/<uuid>",
        );
        let failure_url = self.secret_url(
            Key::BackupFailureUrl,
            "write the whole URL to POST to, e.g. https://hc-ping.com/<uuid>/fail or a webhook URL",
        );
        let duckdb = self.duckdb();
        let http_addr = if self.is_set(Key::HttpAddr) {
            self.parse(
                Key::HttpAddr,
                "write host:port, e.g. 127.0.0.1:9090 (or :9090 for every interface)",
                |t| {
                    let full = if t.starts_with(':') {
                        format!("0.0.0.0{t}")
                    } else {
                        t.to_owned()
                    };
                    full.parse::<std::net::SocketAddr>()
                        .map(Some)
                        .map_err(|_| "not an IP address and port".to_owned())
                },
            )
        } else {
            Some(None)
        };
        let log = self.log();
        let mut s3 = self.s3();
        let backup = backup_location.as_ref().and_then(Option::as_ref);
        self.check_paths(archive.as_ref(), backup);
        if backup_location == Some(None) {
            self.check_unused_notifications([&heartbeat_url, &failure_url]);
        }
        if let Some(s3) = s3.as_mut() {
            self.check_dotted_buckets(s3, [archive.as_ref(), backup]);
        }
        Some(Settings {
            db_path,
            data_path,
            archive: archive?,
            data_retention_days: data_retention_days?,
            backup: BackupSettings {
                location: backup_location?,
                interval: interval?,
                retention: retention?,
                keep: keep?,
                prune_s3: prune_s3?,
                concurrency: concurrency?,
                mode: mode?,
                recipients: encryption.0?,
                recipients_file: encryption.1,
                identity_file: encryption.2?,
                tenant_keys: tenant_keys?,
                object_lock: object_lock?,
                heartbeat_url: heartbeat_url?,
                failure_url: failure_url?,
            },
            duckdb: duckdb?,
            s3: s3?,
            log: log?,
            http_addr: http_addr?,
        })
    }

    /// S3 Object Lock, when days are set: only for an S3 backup path, which alone can hold it.
    fn object_lock(&mut self, location: Option<&Option<Location>>) -> Option<Option<ObjectLock>> {
        let days = self.parse(
            Key::BackupObjectLockDays,
            "set the days each snapshot stays locked, e.g. {env}=30 (0 turns Object Lock off)",
            |t| int_in(t, 0, 36_500, "days"),
        );
        let mode = self.parse(
            Key::BackupObjectLockMode,
            "use governance (the default: an account allowed s3:BypassGovernanceRetention can still lift it) or compliance (nobody can until the days pass)",
            |t| match t.trim().to_ascii_lowercase().as_str() {
                "governance" => Ok(LockMode::Governance),
                "compliance" => Ok(LockMode::Compliance),
                _ => Err("not governance or compliance".to_owned()),
            },
        );
        let (days, mode) = (days?, mode?);
        let Some(days) = NonZeroU32::new(days) else {
            if self.is_set(Key::BackupObjectLockMode) {
                self.warn(
                    Key::BackupObjectLockMode,
                    "a lock mode is set but HITKEEP_BACKUP_OBJECT_LOCK_DAYS is 0, so snapshots are not locked",
                    "set HITKEEP_BACKUP_OBJECT_LOCK_DAYS, e.g. 30, or unset the mode",
                );
            }
            return Some(None);
        };
        if let Some(Some(Location::Local(_))) = location {
            self.error(
                Key::BackupObjectLockDays,
                "Object Lock is an S3 feature, and HITKEEP_BACKUP_PATH is a directory",
                "set HITKEEP_BACKUP_PATH to s3://bucket/prefix on a bucket created with Object Lock, or set HITKEEP_BACKUP_OBJECT_LOCK_DAYS=0",
            );
            return None;
        }
        Some(Some(ObjectLock::new(days, mode)))
    }

    /// Whether tenants get keys of their own: only with recipients, which wrap their private keys.
    fn tenant_keys(&mut self, recipients: Option<&Vec<String>>) -> Option<bool> {
        let on = self.parse(
            Key::BackupTenantKeys,
            "use true or false (also 1/0, yes/no, on/off)",
            parse_bool,
        )?;
        if on && recipients.is_some_and(Vec::is_empty) {
            self.error(
                Key::BackupTenantKeys,
                "tenant keys are sealed to the operator's recipients, and none is set",
                "set HITKEEP_BACKUP_RECIPIENTS (or HITKEEP_BACKUP_RECIPIENTS_FILE) to the operator's age public key, e.g. one `hitkeep backup keygen FILE` printed, or set HITKEEP_BACKUP_TENANT_KEYS=false",
            );
            return None;
        }
        Some(on)
    }

    /// The recipients (from the setting and its file, each checked to parse), the file they came
    /// from, and the identity file (checked to exist; its content is a secret and stays unread).
    /// A private key found in any of the three settings, or in the recipients file, is refused
    /// without being echoed.
    #[allow(clippy::type_complexity)]
    fn encryption(
        &mut self,
    ) -> (
        Option<Vec<String>>,
        Option<PathBuf>,
        Option<Option<PathBuf>>,
    ) {
        let mut recipients = Some(Vec::new());
        let text = |r: &Self, key| {
            r.is_set(key)
                .then(|| r.text(key).unwrap_or_default().to_owned())
        };
        let (listed, file, identity) = (
            text(self, Key::BackupRecipients),
            text(self, Key::BackupRecipientsFile),
            text(self, Key::BackupIdentityFile),
        );
        // Anywhere in the list of recipients; a path only when it is a key itself (a file may well
        // be named `age-secret-key-prod`).
        let is_key = |path: &str| {
            path.trim()
                .to_ascii_uppercase()
                .starts_with("AGE-SECRET-KEY-1")
        };
        for (key, given) in [
            (
                Key::BackupRecipients,
                listed.as_deref().is_some_and(holds_private_key),
            ),
            (
                Key::BackupRecipientsFile,
                file.as_deref().is_some_and(is_key),
            ),
            (
                Key::BackupIdentityFile,
                identity.as_deref().is_some_and(is_key),
            ),
        ] {
            if given {
                self.private_key_given(key, "");
                recipients = None;
            }
        }
        if recipients.is_none() {
            return (None, None, None);
        }
        if let Some(text) = &listed {
            let entries = text.split(|c: char| c == ',' || c.is_whitespace());
            self.add_recipients(
                &mut recipients,
                Key::BackupRecipients,
                entries.map(|r| (r, None)),
            );
        }
        let file = file.map(PathBuf::from);
        if let Some(path) = &file {
            match std::fs::read_to_string(path) {
                Ok(text) if holds_private_key(&text) => {
                    self.private_key_given(Key::BackupRecipientsFile, " in the file it names");
                    recipients = None;
                }
                Ok(text) => {
                    let lines = text.lines().enumerate();
                    let entries = lines
                        .filter(|(_, l)| !l.trim_start().starts_with('#'))
                        .map(|(n, l)| (l, Some(n + 1)));
                    self.add_recipients(&mut recipients, Key::BackupRecipientsFile, entries);
                }
                Err(e) => {
                    self.error(
                        Key::BackupRecipientsFile,
                        format!("cannot read {}: {e}", path.display()),
                        "name a readable file of age public keys (age1…), one per line",
                    );
                    recipients = None;
                }
            }
        }
        let identity = match identity.map(PathBuf::from) {
            Some(path) if path.is_file() => Some(Some(path)),
            Some(path) => {
                self.error(
                    Key::BackupIdentityFile,
                    format!("{} is not a readable file", path.display()),
                    "name the age identity file (AGE-SECRET-KEY-1…, as age-keygen writes it) that opens the snapshots",
                );
                None
            }
            None => Some(None),
        };
        (recipients, file, identity)
    }

    /// The error for a private key given where it does not belong, with the value redacted.
    fn private_key_given(&mut self, key: Key, place: &str) {
        let fix = match key {
            Key::BackupIdentityFile => {
                "write the private key into a file (mode 0600) and give that file's path here"
            }
            _ => {
                "give the public key (age-keygen -y FILE prints it) here, and keep the private key off this host, or in a file named by HITKEEP_BACKUP_IDENTITY_FILE where a restore needs it"
            }
        };
        let mut p = self.problem(
            Severity::Error,
            key,
            format!(
                "an age private key (AGE-SECRET-KEY-1…) is given{place} where a {} belongs",
                match key {
                    Key::BackupIdentityFile => "file path",
                    _ => "public key",
                }
            ),
            fix,
        );
        p.value = Some("[redacted]".to_owned());
        self.errors.push(p);
    }

    /// Parses each non-empty entry of `listed` (with its line, from a file) as an age X25519
    /// recipient into `into`; a bad one is an error of `key`, and `into` becomes `None`. Private keys
    /// were refused before, so an entry may be shown.
    fn add_recipients<'t>(
        &mut self,
        into: &mut Option<Vec<String>>,
        key: Key,
        listed: impl Iterator<Item = (&'t str, Option<usize>)>,
    ) {
        for (entry, line) in listed {
            let entry = entry.trim();
            if entry.is_empty() {
                continue;
            }
            let at = line.map(|n| format!(" (line {n})")).unwrap_or_default();
            match entry.parse::<age::x25519::Recipient>() {
                Ok(r) => {
                    if let Some(list) = into.as_mut() {
                        list.push(r.to_string());
                    }
                }
                Err(e) => {
                    self.error(
                        key,
                        // A file's line is not shown: a file named by mistake (an SSH private
                        // key) must not reach the output.
                        match line {
                            None => format!("`{entry}` is not an age X25519 recipient: {e}"),
                            Some(_) => format!("the entry{at} is not an age X25519 recipient: {e}"),
                        },
                        "write the public keys age-keygen prints (age1…), separated by commas",
                    );
                    *into = None;
                }
            }
        }
    }

    /// The period rules; every one is read, so that each bad value is reported.
    fn keep(&mut self) -> Option<BackupKeep> {
        let mut rule = |key, unit| {
            self.parse(
                key,
                "set a whole number, 0 (off) to 100000, e.g. {env}=7",
                move |t| int_in(t, 0, 100_000, unit),
            )
        };
        let last = rule(Key::BackupKeepLast, "cycles");
        let hourly = rule(Key::BackupKeepHourly, "hours");
        let daily = rule(Key::BackupKeepDaily, "days");
        let weekly = rule(Key::BackupKeepWeekly, "weeks");
        let monthly = rule(Key::BackupKeepMonthly, "months");
        Some(BackupKeep {
            last: last?,
            hourly: hourly?,
            daily: daily?,
            weekly: weekly?,
            monthly: monthly?,
        })
    }

    fn duckdb(&mut self) -> Option<DuckDbSettings> {
        // HitKeep's own values for "DuckDB's default" are accepted: the environment and the YAML file
        // are shared with the server, so `none` and `0` must not stop every command.
        let memory_limit = match self.is_set(Key::DuckdbMemoryLimit) {
            true => self.parse(
                Key::DuckdbMemoryLimit,
                "write a size with its unit, at least 64MiB, e.g. {env}=2GB or {env}=512MiB (or none: DuckDB's default)",
                |t| match t.trim().eq_ignore_ascii_case("none") {
                    true => Ok(None),
                    false => parse_size(t).map(Some),
                },
            ),
            false => Some(None),
        };
        let threads = match self.is_set(Key::DuckdbThreads) {
            true => self.parse(
                Key::DuckdbThreads,
                "set a whole number of threads, 1 to 1024, e.g. {env}=2 (or 0: one per core)",
                |t| match t.trim() == "0" {
                    true => Ok(None),
                    false => int_in(t, 1, 1024, "threads").map(NonZeroU32::new),
                },
            ),
            false => Some(None),
        };
        Some(DuckDbSettings {
            memory_limit: memory_limit?,
            threads: threads?,
        })
    }

    fn location(&mut self, key: Key) -> Option<Location> {
        let fix = format!(
            "use a directory such as /var/lib/hitkeep/{0} or s3://my-bucket/hitkeep/{0}",
            match key {
                Key::ArchivePath => "archive",
                _ => "backups",
            }
        );
        self.parse(key, &fix, |t| match t.parse::<Location>() {
            // Caught here, where the variable can be named, rather than as an I/O error later.
            Ok(Location::Local(path)) if path.is_file() => Err(format!(
                "{} is a file; it must be a directory (created when missing)",
                path.display()
            )),
            other => other.map_err(|e| e.to_string()),
        })
    }

    fn log(&mut self) -> Option<LogSettings> {
        let level = self.parse(
            Key::LogLevel,
            "use one of trace, debug, info, warn, error",
            |t| {
                Ok(match t.to_ascii_lowercase().as_str() {
                    "trace" => LogLevel::Trace,
                    "debug" => LogLevel::Debug,
                    "info" => LogLevel::Info,
                    "warn" | "warning" => LogLevel::Warn,
                    "error" => LogLevel::Error,
                    _ => return Err("not a log level".into()),
                })
            },
        );
        let format = self.parse(Key::LogFormat, "use text or json", |t| {
            match t.to_ascii_lowercase().as_str() {
                "text" => Ok(LogFormat::Text),
                "json" => Ok(LogFormat::Json),
                _ => Err("not a log format".into()),
            }
        });
        Some(LogSettings {
            level: level?,
            format: format?,
        })
    }

    /// The common mistakes about where things go.
    fn check_paths(&mut self, archive: Option<&Location>, backup: Option<&Location>) {
        if let (Some(archive), Some(backup)) = (archive, backup)
            && archive.overlaps(backup)
        {
            self.error(
                Key::BackupPath,
                format!("the backup path and the archive path ({archive}) overlap; pruning snapshots could delete archives"),
                "give them separate prefixes, e.g. s3://bucket/hitkeep/backups and s3://bucket/hitkeep/archive",
            );
        }
        if backup.is_none()
            && self.is_set(Key::ArchivePath)
            && self.errors.iter().all(|p| p.key != Some(Key::BackupPath))
        {
            self.warn(
                Key::ArchivePath,
                "retention archives are configured but backups are disabled (HITKEEP_BACKUP_PATH is empty); archives hold only expired rows and are not backups",
                "set HITKEEP_BACKUP_PATH, e.g. s3://my-bucket/hitkeep/backups, to take snapshots",
            );
        }
    }

    /// The `_FILE` setting `key`'s secret was read from, if it came from a file: problems name that
    /// setting, whose value (a path) can be shown.
    fn holder(&self, key: Key) -> Option<Key> {
        match self.inferred.get(&key) {
            Some(Origin::SecretFile(_)) => key.file_key(),
            _ => None,
        }
    }

    /// Notification URLs are called after backup cycles: with backups disabled, never.
    fn check_unused_notifications(&mut self, urls: [&Option<Option<SecretUrl>>; 2]) {
        let keys = [Key::BackupHeartbeatUrl, Key::BackupFailureUrl];
        for (key, url) in keys.into_iter().zip(urls) {
            if matches!(url, Some(Some(_))) {
                self.warn(
                    self.holder(key).unwrap_or(key),
                    "backups are disabled (HITKEEP_BACKUP_PATH is empty), so this URL is never called",
                    "set HITKEEP_BACKUP_PATH, e.g. s3://my-bucket/hitkeep/backups, to take snapshots",
                );
            }
        }
    }

    /// A bucket with dots breaks virtual-host TLS (`a.b.s3.amazonaws.com` matches no certificate).
    fn check_dotted_buckets(&mut self, s3: &mut S3Settings, locations: [Option<&Location>; 2]) {
        let dotted = locations.into_iter().flatten().find_map(|l| match l {
            Location::S3(s) if s.bucket().contains('.') => Some(s.bucket().to_owned()),
            _ => None,
        });
        let Some(bucket) = dotted else { return };
        if s3.url_style != UrlStyle::VirtualHost {
            return;
        }
        if self.is_set(Key::S3UrlStyle) {
            self.error(
                Key::S3UrlStyle,
                format!(
                    "the bucket {bucket:?} has dots, which vhost addressing cannot reach over HTTPS"
                ),
                "set HITKEEP_S3_URL_STYLE=path",
            );
        } else {
            self.warn(Key::S3UrlStyle, format!("the bucket {bucket:?} has dots, which vhost addressing cannot reach over HTTPS; using path style"), "set HITKEEP_S3_URL_STYLE=path to say so");
            self.inferred.insert(
                Key::S3UrlStyle,
                Origin::Inferred("the bucket name has dots".into()),
            );
            s3.url_style = UrlStyle::Path;
        }
    }

    fn s3(&mut self) -> Option<S3Settings> {
        let credentials = self.credentials();
        let endpoint = if self.is_set(Key::S3Endpoint) {
            self.parse(
                Key::S3Endpoint,
                "write host, host:port or http(s)://host[:port], e.g. localhost:9000",
                |t| t.parse::<Endpoint>().map_err(|e| e.to_string()),
            )
            .map(Some)
        } else {
            Some(None)
        };
        let region = self.parse(
            Key::S3Region,
            "set the bucket's region, e.g. eu-central-1, or auto for Cloudflare R2",
            |t| {
                // Regions are lowercase letters, digits and dashes; anything else only fails later,
                // as a signature the server rejects.
                let valid = !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
                if valid {
                    Ok(t.to_owned())
                } else {
                    Err("not a region name".to_owned())
                }
            },
        );
        let explicit_style = if self.is_set(Key::S3UrlStyle) {
            self.parse(
                Key::S3UrlStyle,
                "use path (MinIO, Garage, IP endpoints) or vhost (AWS S3)",
                |t| {
                    t.parse::<UrlStyle>()
                        .map_err(|()| "not a URL style".to_owned())
                },
            )
            .map(Some)
        } else {
            Some(None)
        };
        let use_ssl = self.parse(
            Key::S3UseSsl,
            "use true or false (also 1/0, yes/no, on/off)",
            parse_bool,
        );
        let checksum = self.parse(
            Key::S3Checksum,
            "use auto (CRC32C, switching to Content-MD5 where the server refuses it), crc32c, md5 or off",
            |t| {
                t.parse::<S3Checksum>()
                    .map_err(|()| format!("not one of {}", S3Checksum::ALLOWED))
            },
        );
        // Each check runs whenever its own inputs parsed, so one bad value does not hide another problem.
        let endpoint = endpoint?;
        let use_ssl = use_ssl.and_then(|ssl| self.resolve_ssl(endpoint.as_ref(), ssl));
        let url_style =
            explicit_style.and_then(|style| self.resolve_url_style(endpoint.as_ref(), style));
        let region = region.and_then(|r| self.resolve_region(endpoint.as_ref(), r));
        Some(S3Settings {
            credentials: credentials?,
            region: region?,
            endpoint,
            url_style: url_style?,
            use_ssl: use_ssl?,
            checksum: checksum?,
        })
    }

    fn credentials(&mut self) -> Option<Credentials> {
        let key_id = self.text(Key::S3AccessKeyId).map(AccessKeyId::new);
        let secret = self.secret(Key::S3SecretAccessKey);
        let token = self.secret(Key::S3SessionToken);
        // Both are read (and both problems reported) before giving up on either.
        let (secret, token) = (secret?, token?);
        match (key_id, secret) {
            (Some(access_key_id), Some(secret_access_key)) => Some(Credentials::Static {
                access_key_id,
                secret_access_key,
                session_token: token,
            }),
            (None, None) if token.is_some() => {
                self.error(Key::S3SessionToken, "a session token needs the temporary access key id and secret key that came with it", "set HITKEEP_S3_ACCESS_KEY_ID and HITKEEP_S3_SECRET_ACCESS_KEY too, or unset HITKEEP_S3_SESSION_TOKEN to use the AWS credential chain");
                None
            }
            (None, None) => Some(Credentials::Chain),
            (Some(_), None) => {
                self.error(Key::S3AccessKeyId, "an access key id without a secret access key", "set HITKEEP_S3_SECRET_ACCESS_KEY too, or unset both to use the AWS credential chain");
                None
            }
            (None, Some(_)) => {
                self.error(Key::S3SecretAccessKey, "a secret access key without an access key id", "set HITKEEP_S3_ACCESS_KEY_ID too, or unset both to use the AWS credential chain");
                None
            }
        }
    }

    /// A secret given as itself or, through its `_FILE` setting, as a file holding it (trailing
    /// newlines trimmed), never both. `None` when that failed, with the error recorded.
    fn secret(&mut self, key: Key) -> Option<Option<Secret>> {
        let file_key = key.file_key()?;
        let Some(path) = self.values.get(&file_key).map(|v| PathBuf::from(&v.text)) else {
            return Some(self.text(key).map(Secret::new));
        };
        if let Some(plain) = self.values.get(&key) {
            let message = format!(
                "{key} is set as well ({}); a secret comes from one of them only",
                plain.origin.describe(key)
            );
            let fix = format!("unset {} or {}", key.env(), file_key.env());
            self.error(file_key, message, fix);
            return None;
        }
        match read_secret(&path) {
            Ok(secret) => {
                // Shown by `config show` as the secret's origin.
                self.inferred.insert(key, Origin::SecretFile(path));
                Some(Some(secret))
            }
            Err(why) => {
                let fix = format!(
                    "point {} at a readable file that holds only the secret (a trailing newline is ignored)",
                    file_key.env()
                );
                self.error(file_key, why, fix);
                None
            }
        }
    }

    /// A URL that holds a token, given as itself or through its `_FILE` setting ([`Self::secret`]).
    /// A bad one is an error naming the setting that held it, and never quoting it.
    fn secret_url(&mut self, key: Key, fix: &str) -> Option<Option<SecretUrl>> {
        let Some(secret) = self.secret(key)? else {
            return Some(None);
        };
        match secret.expose().parse::<SecretUrl>() {
            Ok(url) => Some(Some(url)),
            Err(why) => {
                match self.holder(key) {
                    Some(file_key) => {
                        self.error(file_key, format!("the file's content is {why}"), fix);
                    }
                    None => self.error(key, why.to_string(), fix),
                }
                None
            }
        }
    }

    /// An endpoint's own scheme decides, unless `USE_SSL` was set to say the opposite.
    fn resolve_ssl(&mut self, endpoint: Option<&Endpoint>, use_ssl: bool) -> Option<bool> {
        let Some(scheme) = endpoint.and_then(Endpoint::scheme) else {
            return Some(use_ssl);
        };
        let scheme_ssl = scheme == Scheme::Https;
        if scheme_ssl == use_ssl {
            return Some(use_ssl);
        }
        if self.is_set(Key::S3UseSsl) {
            let (msg, fix) = match scheme {
                Scheme::Http => (
                    "the endpoint is plain http:// but HITKEEP_S3_USE_SSL is true",
                    "set HITKEEP_S3_USE_SSL=false, or write the endpoint as https://",
                ),
                Scheme::Https => (
                    "the endpoint is https:// but HITKEEP_S3_USE_SSL is false",
                    "remove HITKEEP_S3_USE_SSL=false, or write the endpoint as http://",
                ),
            };
            self.error(Key::S3Endpoint, msg, fix);
            return None;
        }
        self.warn(Key::S3Endpoint, "the endpoint is plain http:// while HITKEEP_S3_USE_SSL defaults to true; using plain HTTP as the endpoint says", "set HITKEEP_S3_USE_SSL=false to say so");
        self.inferred.insert(
            Key::S3UseSsl,
            Origin::Inferred("the endpoint's http:// scheme".into()),
        );
        Some(false)
    }

    /// Path style where virtual hosts cannot work (IPs, localhost, ports); HitKeep's vhost default elsewhere.
    fn resolve_url_style(
        &mut self,
        endpoint: Option<&Endpoint>,
        explicit: Option<UrlStyle>,
    ) -> Option<UrlStyle> {
        let needs_path = endpoint.filter(|e| e.is_ip_or_localhost() || e.port().is_some());
        match (explicit, needs_path) {
            (Some(UrlStyle::VirtualHost), Some(e)) if e.is_ip_or_localhost() => {
                self.error(Key::S3UrlStyle, format!("vhost addressing cannot work with the endpoint {e}: a bucket cannot be a subdomain of an IP address or localhost"), "set HITKEEP_S3_URL_STYLE=path");
                None
            }
            (Some(style), _) => Some(style),
            (None, Some(e)) => {
                self.warn(Key::S3UrlStyle, format!("the endpoint {e} is an IP address, localhost or has a port, which needs path-style requests; using path style"), "set HITKEEP_S3_URL_STYLE=path to say so");
                self.inferred.insert(
                    Key::S3UrlStyle,
                    Origin::Inferred("the endpoint needs path style".into()),
                );
                Some(UrlStyle::Path)
            }
            (None, None) => Some(UrlStyle::VirtualHost),
        }
    }

    /// Cloudflare R2 signs with region `auto`: the default is corrected, a deliberate other region is refused.
    fn resolve_region(&mut self, endpoint: Option<&Endpoint>, region: String) -> Option<String> {
        if !endpoint.is_some_and(Endpoint::is_r2) || region == "auto" {
            return Some(region);
        }
        if self.is_set(Key::S3Region) {
            self.error(
                Key::S3Region,
                "Cloudflare R2 endpoints need region auto",
                "set HITKEEP_S3_REGION=auto",
            );
            return None;
        }
        self.warn(
            Key::S3Region,
            "Cloudflare R2 endpoint with the default region us-east-1; using auto",
            "set HITKEEP_S3_REGION=auto",
        );
        self.inferred.insert(
            Key::S3Region,
            Origin::Inferred("Cloudflare R2 endpoint".into()),
        );
        Some("auto".to_owned())
    }
}

/// The secret in the file at `path`, without trailing newlines (`echo` and editors add one). The
/// reason for a failure names the file, never its content.
fn read_secret(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let secret = text.trim_end_matches(['\n', '\r']);
    if secret.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(secret))
}

/// Booleans as people write them: true/false, 1/0, yes/no, on/off, and Go's t/f, in any case.
/// Whether `text` holds an age private key (`AGE-SECRET-KEY-1…`, any case, anywhere).
fn holds_private_key(text: &str) -> bool {
    text.to_ascii_uppercase().contains("AGE-SECRET-KEY-")
}

fn parse_bool(text: &str) -> Result<bool, String> {
    match text.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" | "t" | "y" => Ok(true),
        "false" | "0" | "no" | "off" | "f" | "n" => Ok(false),
        _ => Err("not a boolean".into()),
    }
}

/// `2GB`, `1.5 GiB`, `512mib`: a byte count, with DuckDB's units (GB = 1000³ bytes, GiB = 1024³).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| "not a size such as 2GB or 512MiB".to_owned())?;
    let scale: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" => return Err("has no unit: write 2GB or 512MiB, not a bare number".to_owned()),
        "b" | "bytes" => 1,
        "kb" => 1000,
        "mb" => 1000_u64.pow(2),
        "gb" => 1000_u64.pow(3),
        "tb" => 1000_u64.pow(4),
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        other => {
            return Err(format!(
                "has an unknown unit {other:?} (use KB, MB, GB, TB or KiB, MiB, GiB, TiB)"
            ));
        }
    };
    let bytes = number * scale as f64;
    if !(bytes >= (64 << 20) as f64 && bytes < 1e18) {
        return Err("must be at least 64MiB".to_owned());
    }
    Ok(bytes as u64)
}

fn int_in(text: &str, min: u32, max: u32, unit: &str) -> Result<u32, String> {
    let n: i64 = text
        .parse()
        .map_err(|_| format!("not a whole number of {unit}"))?;
    u32::try_from(n)
        .ok()
        .filter(|n| (min..=max).contains(n))
        .ok_or_else(|| format!("must be between {min} and {max} {unit}"))
}
