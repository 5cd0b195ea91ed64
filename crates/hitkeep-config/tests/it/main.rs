//! hitkeep-config through its public API: layering, every variable and spelling, malformed values, the
//! guide's common mistakes, and secrets.

use std::collections::BTreeMap;
use std::time::Duration;

use hitkeep_config::{
    Config, ConfigError, Credentials, Key, Location, Origin, Severity, Sources, UrlStyle,
};

fn env(pairs: &[(&str, &str)]) -> Sources {
    let env: BTreeMap<String, String> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Sources {
        env,
        ..Sources::default()
    }
}

fn load(pairs: &[(&str, &str)]) -> Config {
    Config::load(&env(pairs)).unwrap_or_else(|e| panic!("{pairs:?} failed:\n{e}"))
}

fn load_err(pairs: &[(&str, &str)]) -> ConfigError {
    match Config::load(&env(pairs)) {
        Ok(c) => panic!("{pairs:?} was accepted: {:?}", c.settings),
        Err(e) => e,
    }
}

fn warning_keys(c: &Config) -> Vec<Key> {
    c.warnings.iter().filter_map(|w| w.key).collect()
}

/// `auto` (any case) is the default said out loud; a number is kept exactly.
#[test]
fn backup_concurrency_is_auto_or_a_number() {
    use hitkeep_config::Concurrency;
    for (text, want) in [
        ("auto", Concurrency::Auto),
        (" AUTO ", Concurrency::Auto),
        ("1", Concurrency::Fixed(1.try_into().unwrap())),
        ("3", Concurrency::Fixed(3.try_into().unwrap())),
    ] {
        let c = load(&[("HITKEEP_BACKUP_CONCURRENCY", text)]);
        assert_eq!(c.settings.backup.concurrency, want, "{text:?}");
    }
    assert_eq!(Concurrency::Auto.to_string(), "auto");
}

#[test]
fn defaults_match_hitkeep() {
    let c = load(&[]);
    let s = &c.settings;
    assert_eq!(s.db_path.to_str(), Some("hitkeep.db"));
    assert_eq!(s.data_path.to_str(), Some("data"));
    assert_eq!(s.archive, Location::Local("archive".into()));
    assert_eq!(s.data_retention_days, 365);
    assert_eq!(s.backup.location, None);
    assert_eq!(s.backup.interval, Duration::from_secs(3600));
    assert_eq!(s.backup.retention.get(), 24);
    assert_eq!(s.backup.concurrency, hitkeep_config::Concurrency::Auto);
    assert_eq!(s.backup.concurrency.get(), 2);
    assert_eq!(s.duckdb.memory_limit, None, "DuckDB's own default");
    assert_eq!(s.duckdb.threads, None);
    assert_eq!(s.s3.credentials, Credentials::Chain);
    assert_eq!(s.s3.region, "us-east-1");
    assert_eq!(s.s3.endpoint, None);
    assert_eq!(s.s3.url_style, UrlStyle::VirtualHost);
    assert!(s.s3.use_ssl);
    assert_eq!(s.s3.checksum, hitkeep_config::S3Checksum::Auto);
    assert_eq!(s.backup.heartbeat_url, None, "no notifications");
    assert_eq!(s.backup.failure_url, None);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert!(Key::ALL.iter().all(|&k| *c.origin(k) == Origin::Default));
}

#[test]
fn every_variable_is_read() {
    let c = load(&[
        ("HITKEEP_DB_PATH", "/var/lib/hitkeep/data/hitkeep.db"),
        ("HITKEEP_DATA_PATH", "/var/lib/hitkeep/data"),
        ("HITKEEP_ARCHIVE_PATH", "s3://my-bucket/hitkeep/archive"),
        ("HITKEEP_DATA_RETENTION_DAYS", "30"),
        ("HITKEEP_BACKUP_PATH", "s3://my-bucket/hitkeep/backups"),
        ("HITKEEP_BACKUP_INTERVAL", "15"),
        ("HITKEEP_BACKUP_RETENTION", "48"),
        ("HITKEEP_BACKUP_PRUNE_S3", "yes"),
        ("HITKEEP_BACKUP_CONCURRENCY", "4"),
        ("HITKEEP_BACKUP_MODE", "Incremental"),
        ("HITKEEP_BACKUP_KEEP_LAST", "3"),
        ("HITKEEP_BACKUP_KEEP_HOURLY", "24"),
        ("HITKEEP_BACKUP_KEEP_DAILY", "7"),
        ("HITKEEP_BACKUP_KEEP_WEEKLY", "4"),
        ("HITKEEP_BACKUP_KEEP_MONTHLY", "12"),
        ("HITKEEP_BACKUP_OBJECT_LOCK_DAYS", "30"),
        ("HITKEEP_BACKUP_OBJECT_LOCK_MODE", "Compliance"),
        (
            "HITKEEP_BACKUP_HEARTBEAT_URL",
            "https://hc-ping.com/5c6644da-ef00-45e6-825d-c755d19d7f9f",
        ),
        (
            "HITKEEP_BACKUP_FAILURE_URL",
            "https://hc-ping.com/5c6644da-ef00-45e6-825d-c755d19d7f9f/fail",
        ),
        ("HITKEEP_DUCKDB_MEMORY_LIMIT", "1.5GiB"),
        ("HITKEEP_DUCKDB_THREADS", "2"),
        ("HITKEEP_S3_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        (
            "HITKEEP_S3_SECRET_ACCESS_KEY",
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
        ),
        ("HITKEEP_S3_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLETOKEN"),
        ("HITKEEP_S3_REGION", "eu-central-1"),
        ("HITKEEP_S3_ENDPOINT", "https://s3.example.com"),
        ("HITKEEP_S3_URL_STYLE", "path"),
        ("HITKEEP_S3_USE_SSL", "true"),
        ("HITKEEP_S3_CHECKSUM", "md5"),
        ("HITKEEP_LOG_LEVEL", "debug"),
        ("HITKEEP_LOG_FORMAT", "json"),
        ("HITKEEP_HTTP_ADDR", ":9090"),
    ]);
    let s = &c.settings;
    assert_eq!(s.db_path.to_str(), Some("/var/lib/hitkeep/data/hitkeep.db"));
    assert_eq!(s.data_path.to_str(), Some("/var/lib/hitkeep/data"));
    assert_eq!(s.archive.to_string(), "s3://my-bucket/hitkeep/archive");
    assert_eq!(s.data_retention_days, 30);
    assert_eq!(
        s.backup.location.as_ref().unwrap().to_string(),
        "s3://my-bucket/hitkeep/backups"
    );
    assert_eq!(s.backup.interval, Duration::from_secs(15 * 60));
    assert_eq!(s.backup.retention.get(), 48);
    assert!(s.backup.prune_s3);
    assert_eq!(s.backup.concurrency.get(), 4);
    assert_eq!(s.backup.concurrency.to_string(), "4");
    let k = s.backup.keep;
    assert_eq!(
        (k.last, k.hourly, k.daily, k.weekly, k.monthly),
        (3, 24, 7, 4, 12)
    );
    assert_eq!(
        s.backup.heartbeat_url.as_ref().map(|u| u.expose()),
        Some("https://hc-ping.com/5c6644da-ef00-45e6-825d-c755d19d7f9f")
    );
    assert_eq!(
        s.backup.failure_url.as_ref().map(|u| u.expose()),
        Some("https://hc-ping.com/5c6644da-ef00-45e6-825d-c755d19d7f9f/fail")
    );
    assert_eq!(
        s.backup.object_lock,
        Some(hitkeep_config::ObjectLock::new(
            std::num::NonZeroU32::new(30).unwrap(),
            hitkeep_config::LockMode::Compliance
        ))
    );
    assert_eq!(s.duckdb.memory_limit, Some(1536 * 1024 * 1024));
    assert_eq!(s.duckdb.threads.map(|t| t.get()), Some(2));
    assert_eq!(s.http_addr, Some("0.0.0.0:9090".parse().unwrap()));
    let Credentials::Static {
        access_key_id,
        secret_access_key,
        session_token,
    } = &s.s3.credentials
    else {
        panic!()
    };
    assert_eq!(access_key_id.expose(), "AKIAIOSFODNN7EXAMPLE");
    assert_eq!(
        secret_access_key.expose(),
        "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
    );
    assert_eq!(
        session_token.as_ref().unwrap().expose(),
        "FwoGZXIvYXdzEXAMPLETOKEN"
    );
    assert_eq!(s.s3.region, "eu-central-1");
    assert_eq!(
        s.s3.endpoint_url().as_deref(),
        Some("https://s3.example.com")
    );
    assert_eq!(s.s3.url_style, UrlStyle::Path);
    assert!(s.s3.use_ssl);
    assert_eq!(s.s3.checksum, hitkeep_config::S3Checksum::Md5);
    assert_eq!(s.log.level, hitkeep_config::LogLevel::Debug);
    assert_eq!(s.log.format, hitkeep_config::LogFormat::Json);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    // A secret's `_FILE` setting is the other way to give it (`secrets_from_files`); encryption's
    // settings (tenant keys need recipients) are read in `encryption_settings…`.
    let files = [
        Key::S3SecretAccessKeyFile,
        Key::S3SessionTokenFile,
        Key::BackupHeartbeatUrlFile,
        Key::BackupFailureUrlFile,
        Key::BackupRecipients,
        Key::BackupRecipientsFile,
        Key::BackupIdentityFile,
        Key::BackupTenantKeys,
    ];
    assert!(
        Key::ALL
            .iter()
            .filter(|k| !files.contains(k))
            .all(|&k| *c.origin(k) == Origin::Env),
        "every value comes from the environment"
    );
}

#[test]
fn boolean_spellings() {
    for (text, want) in [
        ("true", true),
        ("TRUE", true),
        ("1", true),
        ("yes", true),
        ("Yes", true),
        ("on", true),
        ("ON", true),
        ("t", true),
        ("false", false),
        ("False", false),
        ("0", false),
        ("no", false),
        ("NO", false),
        ("off", false),
        ("Off", false),
        ("f", false),
    ] {
        assert_eq!(
            load(&[("HITKEEP_S3_USE_SSL", text)]).settings.s3.use_ssl,
            want,
            "{text}"
        );
    }
}

#[test]
fn url_style_and_scheme_spellings() {
    for (text, want) in [
        ("path", UrlStyle::Path),
        ("PATH", UrlStyle::Path),
        ("Path", UrlStyle::Path),
        ("vhost", UrlStyle::VirtualHost),
        ("VHOST", UrlStyle::VirtualHost),
    ] {
        assert_eq!(
            load(&[("HITKEEP_S3_URL_STYLE", text)])
                .settings
                .s3
                .url_style,
            want,
            "{text}"
        );
    }
    for path in ["s3://b-1/x", "S3://b-1/x", "s3://b-1//x/", "S3://b-1/x/"] {
        assert_eq!(
            load(&[("HITKEEP_BACKUP_PATH", path)])
                .settings
                .backup
                .location
                .unwrap()
                .to_string(),
            "s3://b-1/x",
            "{path}"
        );
    }
    for level in [
        "debug", "DEBUG", "Info", "warn", "warning", "error", "trace",
    ] {
        load(&[("HITKEEP_LOG_LEVEL", level)]);
    }
}

#[test]
fn endpoint_spellings() {
    let url = |e: &str, ssl: &str| {
        load(&[
            ("HITKEEP_S3_ENDPOINT", e),
            ("HITKEEP_S3_USE_SSL", ssl),
            ("HITKEEP_S3_URL_STYLE", "path"),
        ])
        .settings
        .s3
        .endpoint_url()
        .unwrap()
    };
    assert_eq!(
        url("minio.example.com", "true"),
        "https://minio.example.com"
    );
    assert_eq!(url("localhost:9000", "false"), "http://localhost:9000");
    assert_eq!(
        url("http://127.0.0.1:3900", "false"),
        "http://127.0.0.1:3900"
    );
    assert_eq!(
        url("https://minio.example.com:9443/", "true"),
        "https://minio.example.com:9443"
    );
    assert_eq!(url("HTTPS://[::1]:9000", "yes"), "https://[::1]:9000");
}

#[test]
fn region_is_any_non_empty_string() {
    for region in ["auto", "eu-central-1", "garage", "us-gov-west-1"] {
        assert_eq!(
            load(&[("HITKEEP_S3_REGION", region)]).settings.s3.region,
            region
        );
    }
}

#[test]
fn empty_values_count_as_unset() {
    let c = load(&[
        ("HITKEEP_S3_REGION", ""),
        ("HITKEEP_BACKUP_INTERVAL", "  "),
        ("HITKEEP_BACKUP_PATH", ""),
        ("HITKEEP_S3_ACCESS_KEY_ID", ""),
    ]);
    assert_eq!(c.settings.s3.region, "us-east-1");
    assert_eq!(c.settings.backup.interval, Duration::from_secs(3600));
    assert_eq!(c.settings.backup.location, None);
    assert_eq!(c.settings.s3.credentials, Credentials::Chain);
    assert_eq!(*c.origin(Key::S3Region), Origin::Default);
}

#[test]
fn unrelated_variables_are_ignored() {
    load(&[
        ("HITKEEP_JWT_SECRET", "x"),
        ("HITKEEP_PUBLIC_URL", "https://a"),
        ("PATH", "/bin"),
    ]);
}

#[test]
fn layers_defaults_file_env_flags() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hitkeep.toml");
    std::fs::write(&file, "s3_region = \"from-file\"\nbackup_interval = 5\nbackup_retention = 7\ns3_use_ssl = false\ndb_path = \"file.db\"\n").unwrap();
    let mut sources = env(&[
        ("HITKEEP_BACKUP_INTERVAL", "10"),
        ("HITKEEP_DB_PATH", "env.db"),
        ("HITKEEP_CONFIG", file.to_str().unwrap()),
    ]);
    sources.flags.insert(Key::DbPath, "flag.db".into());
    sources.flags.insert(Key::S3UrlStyle, String::new()); // an empty flag is unset too
    let c = Config::load(&sources).unwrap();
    let s = &c.settings;
    assert_eq!(s.s3.region, "from-file");
    assert_eq!(s.backup.retention.get(), 7);
    assert!(!s.s3.use_ssl, "a TOML boolean is read");
    assert_eq!(
        s.backup.interval,
        Duration::from_secs(600),
        "env beats the file"
    );
    assert_eq!(
        s.db_path.to_str(),
        Some("flag.db"),
        "a flag beats env and file"
    );
    assert_eq!(*c.origin(Key::S3Region), Origin::File(file.clone()));
    assert_eq!(*c.origin(Key::BackupInterval), Origin::Env);
    assert_eq!(*c.origin(Key::DbPath), Origin::Flag);
    assert_eq!(*c.origin(Key::LogLevel), Origin::Default);
    assert_eq!(c.config_file.as_deref(), Some(file.as_path()));

    // --config wins over HITKEEP_CONFIG.
    let other = dir.path().join("other.toml");
    std::fs::write(&other, "s3_region = \"other\"\n").unwrap();
    sources.config_file = Some(other);
    assert_eq!(Config::load(&sources).unwrap().settings.s3.region, "other");
}

#[test]
fn config_file_problems() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Config::load(&Sources {
        config_file: Some(dir.path().join("nope.toml")),
        ..Sources::default()
    })
    .unwrap_err();
    assert!(missing.to_string().contains("nope.toml"), "{missing}");

    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "s3_region = \n").unwrap();
    let e = Config::load(&Sources {
        config_file: Some(bad.clone()),
        ..Sources::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("bad.toml"), "{e}");

    std::fs::write(&bad, "s3_secret_access_key = wJalrXUtnFEMIunquoted\n").unwrap();
    let e = Config::load(&Sources {
        config_file: Some(bad.clone()),
        ..Sources::default()
    })
    .unwrap_err();
    assert!(
        e.to_string().contains("line 1") && !e.to_string().contains("wJalrXUtnFEMI"),
        "never echo the file's lines: {e}"
    );

    std::fs::write(&bad, "s3_regoin = \"eu-central-1\"\n[s3]\nregion = 1\n").unwrap();
    let e = Config::load(&Sources {
        config_file: Some(bad),
        ..Sources::default()
    })
    .unwrap_err();
    assert_eq!(e.errors.len(), 2, "{e}");
    assert!(e.to_string().contains("unknown setting `s3_regoin`"), "{e}");
}

/// A local destination that exists as a file is a config error naming the variable, not an I/O
/// error halfway through a backup.
#[test]
fn a_destination_that_is_a_file_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backups");
    std::fs::write(&file, "not a directory").unwrap();
    let file = file.display().to_string();
    for var in ["HITKEEP_BACKUP_PATH", "HITKEEP_ARCHIVE_PATH"] {
        let e = load_err(&[(var, &file)]);
        let text = e.to_string();
        assert!(text.contains(var) && text.contains("is a file"), "{text}");
    }
}

/// Malformed values: each is an error naming the variable, the flag and the value, never a fallback.
#[test]
fn malformed_values_are_errors() {
    let cases: &[(&str, &str)] = &[
        ("HITKEEP_BACKUP_INTERVAL", "0"),
        ("HITKEEP_BACKUP_INTERVAL", "-5"),
        ("HITKEEP_BACKUP_INTERVAL", "sixty"),
        ("HITKEEP_BACKUP_INTERVAL", "1.5"),
        ("HITKEEP_BACKUP_INTERVAL", "60m"),
        ("HITKEEP_BACKUP_INTERVAL", "99999999999"),
        ("HITKEEP_BACKUP_RETENTION", "0"),
        ("HITKEEP_BACKUP_RETENTION", "-1"),
        ("HITKEEP_BACKUP_RETENTION", "ten"),
        ("HITKEEP_BACKUP_RETENTION", "2e3"),
        ("HITKEEP_DATA_RETENTION_DAYS", "-1"),
        ("HITKEEP_DATA_RETENTION_DAYS", "a year"),
        ("HITKEEP_DATA_RETENTION_DAYS", "100000"),
        ("HITKEEP_S3_USE_SSL", "maybe"),
        ("HITKEEP_S3_USE_SSL", "2"),
        ("HITKEEP_S3_USE_SSL", "enabled"),
        ("HITKEEP_S3_URL_STYLE", "virtual"),
        ("HITKEEP_S3_URL_STYLE", "path-style"),
        ("HITKEEP_S3_URL_STYLE", "host"),
        ("HITKEEP_S3_ENDPOINT", "ftp://minio:9000"),
        ("HITKEEP_S3_ENDPOINT", "localhost:port"),
        ("HITKEEP_S3_ENDPOINT", "localhost:70000"),
        ("HITKEEP_S3_ENDPOINT", "http://minio:9000/hitkeep"),
        ("HITKEEP_S3_ENDPOINT", "http://"),
        ("HITKEEP_S3_ENDPOINT", "mi nio:9000"),
        ("HITKEEP_BACKUP_PATH", "s3://"),
        ("HITKEEP_BACKUP_PATH", "s3://My_Bucket/backups"),
        ("HITKEEP_BACKUP_PATH", "s3://ab/backups"),
        ("HITKEEP_BACKUP_PATH", "s3://bucket/../etc"),
        ("HITKEEP_BACKUP_PATH", "gs://bucket/backups"),
        ("HITKEEP_BACKUP_PATH", "s3://192.168.0.1/x"),
        ("HITKEEP_ARCHIVE_PATH", "s3://-bad-/archive"),
        ("HITKEEP_ARCHIVE_PATH", "azure://container/x"),
        ("HITKEEP_BACKUP_PATH", "s3:/hitkeep/backups"),
        ("HITKEEP_S3_REGION", "eu central 1"),
        ("HITKEEP_S3_REGION", "EU-CENTRAL-1"),
        ("HITKEEP_BACKUP_PRUNE_S3", "sometimes"),
        ("HITKEEP_HTTP_ADDR", "localhost"),
        ("HITKEEP_HTTP_ADDR", ":99999"),
        ("HITKEEP_LOG_LEVEL", "verbose"),
        ("HITKEEP_LOG_FORMAT", "xml"),
        ("HITKEEP_BACKUP_CONCURRENCY", "0"),
        ("HITKEEP_BACKUP_CONCURRENCY", "all"),
        ("HITKEEP_BACKUP_MODE", "differential"),
        ("HITKEEP_BACKUP_KEEP_DAILY", "-1"),
        ("HITKEEP_BACKUP_KEEP_WEEKLY", "a few"),
        ("HITKEEP_BACKUP_KEEP_MONTHLY", "1000000"),
        ("HITKEEP_DUCKDB_MEMORY_LIMIT", "2048"),
        ("HITKEEP_DUCKDB_MEMORY_LIMIT", "2 gigs"),
        ("HITKEEP_DUCKDB_MEMORY_LIMIT", "1MB"),
        ("HITKEEP_DUCKDB_MEMORY_LIMIT", "80%"),
        ("HITKEEP_DUCKDB_THREADS", "-1"),
        ("HITKEEP_DUCKDB_THREADS", "many"),
        ("HITKEEP_S3_CHECKSUM", "sha256"),
        ("HITKEEP_S3_CHECKSUM", "none"),
    ];
    assert!(cases.len() >= 30);
    for &(var, value) in cases {
        let e = load_err(&[(var, value)]);
        let key = Key::from_env(var).unwrap();
        let problem = e
            .errors
            .iter()
            .find(|p| p.key == Some(key))
            .unwrap_or_else(|| panic!("{var}={value}: {e}"));
        let text = problem.to_string();
        assert!(
            text.contains(var) && text.contains(&format!("--{}", key.flag())),
            "names variable and flag: {text}"
        );
        assert!(
            text.contains(&format!("{value:?}")),
            "shows the bad value: {text}"
        );
        assert!(
            text.contains("fix: "),
            "says what a good value looks like: {text}"
        );
    }
}

#[test]
fn every_problem_is_reported_at_once() {
    let e = load_err(&[
        ("HITKEEP_BACKUP_INTERVAL", "0"),
        ("HITKEEP_BACKUP_RETENTION", "x"),
        ("HITKEEP_S3_USE_SSL", "maybe"),
        ("HITKEEP_S3_URL_STYLE", "nope"),
    ]);
    let keys: Vec<Key> = e.errors.iter().filter_map(|p| p.key).collect();
    assert_eq!(
        keys,
        [
            Key::BackupInterval,
            Key::BackupRetention,
            Key::S3UrlStyle,
            Key::S3UseSsl
        ]
    );
    assert!(
        e.to_string().starts_with("the configuration has 4 errors"),
        "{e}"
    );
}

#[test]
fn secrets_never_appear_in_errors_or_debug() {
    let secret = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
    let token = "FwoGZXIvYXdzSECRETTOKEN";
    let c = load(&[
        ("HITKEEP_S3_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("HITKEEP_S3_SECRET_ACCESS_KEY", secret),
        ("HITKEEP_S3_SESSION_TOKEN", token),
    ]);
    let text = format!(
        "{c:?} {:#?} {} {}",
        c.settings,
        c.render_text(),
        c.render_json()
    );
    assert!(
        !text.contains(secret) && !text.contains(token) && !text.contains("AKIAIOSFODNN7EXAMPLE"),
        "{text}"
    );
    assert!(text.contains("AKIA****") && text.contains("[redacted]"));

    let e = load_err(&[
        ("HITKEEP_S3_SECRET_ACCESS_KEY", secret),
        ("HITKEEP_S3_SESSION_TOKEN", token),
    ]);
    let text = format!("{e} {e:?}");
    assert!(!text.contains(secret) && !text.contains(token), "{text}");
    assert!(text.contains("HITKEEP_S3_SECRET_ACCESS_KEY"), "{text}");
}

// The guide's common mistakes.

#[test]
fn archive_without_backups_warns() {
    let c = load(&[("HITKEEP_ARCHIVE_PATH", "s3://hitkeep/archive")]);
    assert_eq!(warning_keys(&c), [Key::ArchivePath]);
    assert!(c.warnings[0].to_string().contains("HITKEEP_BACKUP_PATH"));
    assert!(
        load(&[
            ("HITKEEP_ARCHIVE_PATH", "s3://hitkeep/archive"),
            ("HITKEEP_BACKUP_PATH", "s3://hitkeep/backups")
        ])
        .warnings
        .is_empty()
    );
}

#[test]
fn ip_localhost_or_port_without_url_style_uses_path_and_says_so() {
    for endpoint in [
        "localhost:9000",
        "127.0.0.1",
        "minio.internal:9000",
        "http://192.168.1.10:9000",
    ] {
        let c = load(&[
            ("HITKEEP_S3_ENDPOINT", endpoint),
            ("HITKEEP_S3_USE_SSL", "false"),
        ]);
        assert_eq!(c.settings.s3.url_style, UrlStyle::Path, "{endpoint}");
        assert!(warning_keys(&c).contains(&Key::S3UrlStyle), "{endpoint}");
        assert!(matches!(c.origin(Key::S3UrlStyle), Origin::Inferred(_)));
        assert!(c.warnings.iter().any(|w| w.to_string().contains("path")));
    }
    let c = load(&[("HITKEEP_S3_ENDPOINT", "minio.example.com")]);
    assert_eq!(c.settings.s3.url_style, UrlStyle::VirtualHost);
    assert!(c.warnings.is_empty());
    let e = load_err(&[
        ("HITKEEP_S3_ENDPOINT", "127.0.0.1:9000"),
        ("HITKEEP_S3_URL_STYLE", "vhost"),
    ]);
    assert_eq!(e.errors[0].key, Some(Key::S3UrlStyle));
}

#[test]
fn http_endpoint_and_use_ssl_must_agree() {
    let e = load_err(&[
        ("HITKEEP_S3_ENDPOINT", "http://minio:9000"),
        ("HITKEEP_S3_USE_SSL", "true"),
        ("HITKEEP_S3_URL_STYLE", "path"),
    ]);
    assert!(
        e.errors[0].to_string().contains("HITKEEP_S3_USE_SSL=false"),
        "{e}"
    );
    let e = load_err(&[
        ("HITKEEP_S3_ENDPOINT", "https://minio:9000"),
        ("HITKEEP_S3_USE_SSL", "false"),
        ("HITKEEP_S3_URL_STYLE", "path"),
    ]);
    assert_eq!(e.errors[0].key, Some(Key::S3Endpoint));
    // USE_SSL left at its default: the written scheme wins, with a warning.
    let c = load(&[
        ("HITKEEP_S3_ENDPOINT", "http://minio:9000"),
        ("HITKEEP_S3_URL_STYLE", "path"),
    ]);
    assert!(!c.settings.s3.use_ssl);
    assert_eq!(
        c.settings.s3.endpoint_url().as_deref(),
        Some("http://minio:9000")
    );
    assert_eq!(warning_keys(&c), [Key::S3Endpoint]);
}

#[test]
fn r2_needs_region_auto() {
    let r2 = ("HITKEEP_S3_ENDPOINT", "0123abcd.r2.cloudflarestorage.com");
    assert!(
        load(&[r2, ("HITKEEP_S3_REGION", "auto")])
            .warnings
            .is_empty()
    );
    let e = load_err(&[r2, ("HITKEEP_S3_REGION", "eu-central-1")]);
    assert_eq!(e.errors[0].key, Some(Key::S3Region));
    assert!(e.errors[0].to_string().contains("HITKEEP_S3_REGION=auto"));
    let c = load(&[r2]);
    assert_eq!(c.settings.s3.region, "auto");
    assert_eq!(warning_keys(&c), [Key::S3Region]);
}

#[test]
fn half_a_key_pair_is_an_error() {
    assert_eq!(
        load_err(&[("HITKEEP_S3_ACCESS_KEY_ID", "AKIA1234")]).errors[0].key,
        Some(Key::S3AccessKeyId)
    );
    assert_eq!(
        load_err(&[("HITKEEP_S3_SECRET_ACCESS_KEY", "s")]).errors[0].key,
        Some(Key::S3SecretAccessKey)
    );
    assert_eq!(
        load_err(&[("HITKEEP_S3_SESSION_TOKEN", "t")]).errors[0].key,
        Some(Key::S3SessionToken)
    );
}

#[test]
fn overlapping_backup_and_archive_paths_are_an_error() {
    for (backup, archive) in [
        ("s3://hitkeep/data", "s3://hitkeep/data"),
        ("s3://hitkeep/hitkeep", "s3://hitkeep/hitkeep/archive"),
        ("s3://hitkeep", "s3://hitkeep/archive"),
        (
            "/var/lib/hitkeep/backups",
            "/var/lib/hitkeep/backups/archive",
        ),
    ] {
        let e = load_err(&[
            ("HITKEEP_BACKUP_PATH", backup),
            ("HITKEEP_ARCHIVE_PATH", archive),
        ]);
        assert!(e.to_string().contains("overlap"), "{backup} {archive}: {e}");
    }
    load(&[
        ("HITKEEP_BACKUP_PATH", "s3://hitkeep/backups"),
        ("HITKEEP_ARCHIVE_PATH", "s3://hitkeep/archive"),
    ]);
    load(&[
        ("HITKEEP_BACKUP_PATH", "s3://hitkeep/backups"),
        ("HITKEEP_ARCHIVE_PATH", "s3://hitkeep/backups-archive"),
    ]);
}

#[test]
fn dotted_bucket_needs_path_style() {
    let c = load(&[("HITKEEP_BACKUP_PATH", "s3://backups.example.com/hitkeep")]);
    assert_eq!(c.settings.s3.url_style, UrlStyle::Path);
    assert_eq!(warning_keys(&c), [Key::S3UrlStyle]);
    let e = load_err(&[
        ("HITKEEP_BACKUP_PATH", "s3://backups.example.com/hitkeep"),
        ("HITKEEP_S3_URL_STYLE", "vhost"),
    ]);
    assert_eq!(e.errors[0].key, Some(Key::S3UrlStyle));
}

/// The guide's examples, verbatim, load without errors.
#[test]
fn guide_examples_load() {
    let aws = load(&[
        ("HITKEEP_DATA_PATH", "/var/lib/hitkeep/data"),
        (
            "HITKEEP_BACKUP_PATH",
            "s3://my-analytics-bucket/hitkeep/backups",
        ),
        ("HITKEEP_BACKUP_INTERVAL", "60"),
        ("HITKEEP_BACKUP_RETENTION", "24"),
        ("HITKEEP_S3_REGION", "eu-central-1"),
    ]);
    assert!(aws.warnings.is_empty());
    assert_eq!(aws.settings.s3.service_name(), "AWS S3 (eu-central-1)");
    let minio = load(&[
        ("HITKEEP_BACKUP_PATH", "s3://hitkeep/backups"),
        ("HITKEEP_ARCHIVE_PATH", "s3://hitkeep/archive"),
        ("HITKEEP_S3_ACCESS_KEY_ID", "minioadmin"),
        ("HITKEEP_S3_SECRET_ACCESS_KEY", "minioadmin"),
        ("HITKEEP_S3_ENDPOINT", "localhost:9000"),
        ("HITKEEP_S3_URL_STYLE", "path"),
        ("HITKEEP_S3_USE_SSL", "false"),
        ("HITKEEP_S3_REGION", "us-east-1"),
    ]);
    assert!(minio.warnings.is_empty(), "{:?}", minio.warnings);
    assert_eq!(
        minio.settings.s3.endpoint_url().as_deref(),
        Some("http://localhost:9000")
    );
    let r2 = load(&[
        ("HITKEEP_BACKUP_PATH", "s3://my-r2-bucket/hitkeep/backups"),
        ("HITKEEP_S3_ACCESS_KEY_ID", "YOUR_R2_ACCESS_KEY"),
        ("HITKEEP_S3_SECRET_ACCESS_KEY", "YOUR_R2_SECRET_KEY"),
        (
            "HITKEEP_S3_ENDPOINT",
            "YOUR_ACCOUNT_ID.r2.cloudflarestorage.com",
        ),
        ("HITKEEP_S3_REGION", "auto"),
    ]);
    assert!(r2.warnings.is_empty(), "{:?}", r2.warnings);
    assert_eq!(
        r2.settings.s3.endpoint_url().as_deref(),
        Some("https://your_account_id.r2.cloudflarestorage.com")
    );
}

#[test]
fn warnings_have_severity_warning() {
    let c = load(&[
        ("HITKEEP_S3_ENDPOINT", "localhost:9000"),
        ("HITKEEP_S3_USE_SSL", "0"),
    ]);
    assert!(c.warnings.iter().all(|w| w.severity == Severity::Warning));
}

#[test]
fn memory_limits_use_duckdb_units() {
    let cases = [
        ("2GB", 2_000_000_000),
        ("512MiB", 512 << 20),
        ("1 GiB", 1 << 30),
        ("0.5gib", 512 << 20),
        ("64MiB", 64 << 20),
    ];
    for (text, bytes) in cases {
        let c = load(&[("HITKEEP_DUCKDB_MEMORY_LIMIT", text)]);
        assert_eq!(c.settings.duckdb.memory_limit, Some(bytes), "{text}");
    }
}

#[test]
fn a_bad_checksum_setting_names_the_allowed_values() {
    let e = load_err(&[("HITKEEP_S3_CHECKSUM", "sha256")]);
    let text = e.to_string();
    assert!(
        text.contains("HITKEEP_S3_CHECKSUM (--s3-checksum)")
            && text.contains("\"sha256\"")
            && text.contains("auto, crc32c, md5 or off"),
        "{text}"
    );
}

/// Loads `sources` with HitKeep's YAML file `text` written to `hitkeep.yaml` in `dir`.
fn with_yaml(
    dir: &tempfile::TempDir,
    text: &str,
    mut sources: Sources,
) -> Result<Config, ConfigError> {
    let file = dir.path().join("hitkeep.yaml");
    std::fs::write(&file, text).unwrap();
    sources.config_file = Some(file);
    Config::load(&sources)
}

/// HitKeep's YAML file, in the shape of its `hitkeep.example.yaml`: our keys are read, the server's own
/// are accepted and ignored, and the file sits between the environment and the defaults.
#[test]
fn hitkeep_yaml_file_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
# data settings
db-path: \"/var/lib/hitkeep/data/hitkeep.db\"
data-path: /var/lib/hitkeep/data
db-compact-on-start: true
db-auto-recover: true
db-auto-recover-wal: false
db-checkpoint-interval: 5
db-recovery-path: /var/lib/hitkeep/recovery
import-max-stage-bytes: 107374182400
# backups settings
backup-interval: 15
backup-retention: 48
backup-path: s3://my-bucket/hitkeep/backups
# s3 settings
s3-region: \"eu-central-1\"
s3-url-style: \"\"
s3-use-ssl: true
# other HitKeep settings
mail-host: smtp.example.com
mail-port: 587
api-rate-limit: 10.5
healthcheck: false
";
    let c = with_yaml(&dir, text, Sources::default()).unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("hitkeep.yaml");
    let s = &c.settings;
    assert_eq!(s.db_path.to_str(), Some("/var/lib/hitkeep/data/hitkeep.db"));
    assert_eq!(s.data_path.to_str(), Some("/var/lib/hitkeep/data"));
    assert_eq!(
        s.backup.interval,
        Duration::from_secs(15 * 60),
        "a YAML number"
    );
    assert_eq!(s.backup.retention.get(), 48);
    assert_eq!(
        s.backup.location.as_ref().unwrap().to_string(),
        "s3://my-bucket/hitkeep/backups"
    );
    assert_eq!(s.s3.region, "eu-central-1");
    assert!(s.s3.use_ssl, "a YAML boolean");
    assert_eq!(*c.origin(Key::S3Region), Origin::File(file.clone()));
    assert_eq!(*c.origin(Key::S3UrlStyle), Origin::Default, "\"\" is unset");
    assert_eq!(*c.origin(Key::LogLevel), Origin::Default);
    assert_eq!(c.config_file.as_deref(), Some(file.as_path()));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn yaml_precedence_is_flag_env_file_default() {
    let dir = tempfile::tempdir().unwrap();
    let text = "s3-region: from-file\nbackup-interval: 5\nbackup-retention: 7\ndb-path: file.db\n";
    let mut sources = env(&[
        ("HITKEEP_BACKUP_INTERVAL", "10"),
        ("HITKEEP_DB_PATH", "env.db"),
    ]);
    sources.flags.insert(Key::DbPath, "flag.db".into());
    let c = with_yaml(&dir, text, sources).unwrap();
    let s = &c.settings;
    assert_eq!(
        s.db_path.to_str(),
        Some("flag.db"),
        "a flag beats env and file"
    );
    assert_eq!(
        s.backup.interval,
        Duration::from_secs(600),
        "env beats the file"
    );
    assert_eq!(s.s3.region, "from-file", "the file beats the default");
    assert_eq!(s.backup.retention.get(), 7);
    assert_eq!(s.log.level, hitkeep_config::LogLevel::Info, "the default");
    assert_eq!(*c.origin(Key::DbPath), Origin::Flag);
    assert_eq!(*c.origin(Key::BackupInterval), Origin::Env);
    assert_eq!(
        *c.origin(Key::BackupRetention),
        Origin::File(dir.path().join("hitkeep.yaml"))
    );

    // HITKEEP_CONFIG may name the YAML file too; `.yml` counts.
    let yml = dir.path().join("hitkeep.yml");
    std::fs::write(&yml, "s3-region: auto\n").unwrap();
    let c = Config::load(&env(&[("HITKEEP_CONFIG", yml.to_str().unwrap())])).unwrap();
    assert_eq!(c.settings.s3.region, "auto");
}

#[test]
fn empty_yaml_file_sets_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for text in ["", "# only comments\n\n", "---\n"] {
        let c =
            with_yaml(&dir, text, Sources::default()).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert!(Key::ALL.iter().all(|&k| *c.origin(k) == Origin::Default));
    }
}

/// Every key of HitKeep's catalogue that we do not use is accepted, HitKeep's 2.13 data settings first.
#[test]
fn hitkeep_only_yaml_keys_are_accepted_and_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let text = "\
db-compact-on-start: false
db-auto-recover: false
db-auto-recover-wal: true
db-checkpoint-interval: 0
db-recovery-path: /srv/recovery
jwt-secret: not-ours
public-url: https://analytics.example.com
trusted-proxies: \"*\"
bind-addr: 0.0.0.0:7946
node-name: a
spam-filter-path: /srv/spam.json
mcp-enabled: false
ai-api-key: sk-not-ours
social-github-client-secret: x
stripe-secret-key: sk_live_x
webhook-max-attempts: 6
google-search-console-client-id: id
custom-tracking-tls-mode: external
nsq-tcp-address: 127.0.0.1:4150
http-addr: \":8080\"
";
    let c = with_yaml(&dir, text, Sources::default()).unwrap_or_else(|e| panic!("{e}"));
    // http-addr is the HitKeep server's listen address there, never our scheduler's.
    assert!(Key::ALL.iter().all(|&k| *c.origin(k) == Origin::Default));
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn unknown_yaml_key_is_an_error_naming_key_and_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hitkeep.yaml");
    let e = with_yaml(
        &dir,
        "s3-regoin: eu-central-1\nsomething-else: 1\ns3_region: auto\n",
        Sources::default(),
    )
    .unwrap_err();
    assert_eq!(e.errors.len(), 3, "{e}");
    let text = e.to_string();
    let path = file.display().to_string();
    assert!(
        text.contains(&format!(
            "config file {path}: unknown key `s3-regoin`: neither hitkeep nor the HitKeep server has this setting"
        )),
        "{text}"
    );
    assert!(text.contains("did you mean `s3-region`?"), "{text}");
    assert!(text.contains("unknown key `something-else`"), "{text}");
    assert!(
        text.contains("unknown key `s3_region`")
            && text.matches("did you mean `s3-region`?").count() == 2,
        "a TOML spelling in the YAML file: {text}"
    );
    assert!(
        !text.contains("eu-central-1"),
        "values are never echoed: {text}"
    );
    // A slip of one of HitKeep's own keys points at that key.
    let e = with_yaml(&dir, "db-compact-on-strat: true\n", Sources::default()).unwrap_err();
    assert!(
        e.to_string()
            .contains("did you mean `db-compact-on-start`?"),
        "{e}"
    );
}

#[test]
fn nested_list_null_and_duplicate_yaml_values_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        (
            "s3-region:\n  name: auto\n",
            "`s3-region` has a mapping",
            Some(Key::S3Region),
        ),
        (
            "backup-path: [a, b]\n",
            "`backup-path` has a list",
            Some(Key::BackupPath),
        ),
        (
            "backup-path:\n",
            "`backup-path` has no value (null)",
            Some(Key::BackupPath),
        ),
        (
            "s3-endpoint: ~\n",
            "`s3-endpoint` has no value (null)",
            Some(Key::S3Endpoint),
        ),
        ("mail-host: {a: 1}\n", "`mail-host` has a mapping", None),
        ("s3:\n  region: auto\n", "unknown key `s3`", None),
        (
            "s3-region: a\ns3-region: b\n",
            "`s3-region` appears more than once",
            None,
        ),
    ];
    for (text, want, key) in cases {
        let e = with_yaml(&dir, text, Sources::default()).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{text:?}: {e}");
        let problem = &e.errors[0];
        assert!(
            problem.message.contains(want) && problem.message.contains("hitkeep.yaml"),
            "{text:?}: {e}"
        );
        assert_eq!(problem.key, key, "{text:?}");
    }
}

#[test]
fn malformed_yaml_is_an_error_that_never_quotes_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        "wJalrXUtnFEMIsecretonly\n",
        "s3-secret-access-key: \"wJalrXUtnFEMI\n",
        "s3-region: a\n---\ns3-region: b\n",
        "- s3-secret-access-key\n- wJalrXUtnFEMI\n",
    ];
    for text in cases {
        let e = with_yaml(&dir, text, Sources::default()).unwrap_err();
        let shown = e.to_string();
        assert!(
            shown.contains("cannot read config file") && shown.contains("hitkeep.yaml"),
            "{text:?}: {shown}"
        );
        assert!(!shown.contains("wJalrXUtnFEMI"), "{text:?}: {shown}");
    }
}

fn near_miss_warnings(pairs: &[(&str, &str)]) -> Vec<String> {
    let c = load(pairs);
    c.warnings
        .iter()
        .filter(|w| w.origin == Some(Origin::Env) && w.key.is_none())
        .map(|w| w.to_string())
        .collect()
}

/// The environment is shared with the HitKeep server: a variable that neither of us reads but that is
/// close to one of ours is probably a slip, and is pointed out without its value.
#[test]
fn near_miss_variables_warn_naming_the_setting_meant() {
    let cases = [
        (
            "HITKEEP_BACKUP_RETENTON",
            "HITKEEP_BACKUP_RETENTION (--backup-retention)",
            "HITKEEP_BACKUP_RETENTION",
        ),
        (
            "HITKEEP_S3_SECRET_KEY",
            "HITKEEP_S3_SECRET_ACCESS_KEY (--s3-secret-access-key)",
            "HITKEEP_S3_SECRET_ACCESS_KEY",
        ),
        (
            "hitkeep_s3_region",
            "HITKEEP_S3_REGION (--s3-region)",
            "HITKEEP_S3_REGION",
        ),
    ];
    for (name, meant, variable) in cases {
        let warnings = near_miss_warnings(&[(name, "wJalrXUtnFEMI/K7MDENG")]);
        assert_eq!(warnings.len(), 1, "{name}: {warnings:?}");
        let w = &warnings[0];
        assert!(
            w.starts_with(&format!(
                "warning: {name} is set, but neither hitkeep nor HitKeep reads it; did you mean {meant}?"
            )) && w.contains(&format!("fix: rename {name} to {variable}")),
            "{w}"
        );
        assert!(!w.contains("wJalrXUtnFEMI"), "never the value: {w}");
    }
    let c = load(&[("HITKEEP_BACKUP_RETENTON", "48")]);
    assert_eq!(
        c.settings.backup.retention.get(),
        24,
        "the slip is not read"
    );
    assert!(c.warnings.iter().all(|w| w.severity == Severity::Warning));
    // An empty value is unset, as everywhere else.
    assert!(near_miss_warnings(&[("HITKEEP_BACKUP_RETENTON", "")]).is_empty());
}

#[test]
fn hitkeep_and_far_away_variables_do_not_warn() {
    let warnings = near_miss_warnings(&[
        ("HITKEEP_DB_COMPACT_ON_START", "true"),
        ("HITKEEP_DB_AUTO_RECOVER_WAL", "false"),
        ("HITKEEP_DB_CHECKPOINT_INTERVAL", "5"),
        ("HITKEEP_DB_RECOVERY_PATH", "/srv/recovery"),
        ("HITKEEP_JWT_SECRET", "x"),
        ("HITKEEP_PUBLIC_URL", "https://a"),
        ("HITKEEP_MAIL_PASSWORD", "x"),
        ("HITKEEP_STRIPE_SECRET_KEY", "x"),
        ("HITKEEP_URL", "https://a"),
        ("HITKEEP_FOO", "x"),
        ("HITKEEP_VERSION", "2.13.11"),
        ("HITKEEP_S3_BUCKET", "x"),
        ("HITKEEP_IMAGE_TAG", "latest"),
        // Closer to one of HitKeep's own than to ours: HitKeep's business.
        ("HITKEEP_DB_COMPACT_ON_STRAT", "true"),
    ]);
    assert!(warnings.is_empty(), "{warnings:?}");
}

/// HitKeep's values for "DuckDB's default", from the environment and YAML file the server shares.
#[test]
fn hitkeeps_duckdb_defaults_mean_unset() {
    let s = load(&[
        ("HITKEEP_DUCKDB_THREADS", "0"),
        ("HITKEEP_DUCKDB_MEMORY_LIMIT", "none"),
    ]);
    assert_eq!(s.settings.duckdb.threads, None);
    assert_eq!(s.settings.duckdb.memory_limit, None);
}

/// A file of `dir` holding `text`, as a container runtime mounts a secret.
fn secret_file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path.display().to_string()
}

fn static_keys(c: &Config) -> (String, Option<String>) {
    let Credentials::Static {
        secret_access_key,
        session_token,
        ..
    } = &c.settings.s3.credentials
    else {
        panic!("{:?}", c.settings.s3.credentials)
    };
    (
        secret_access_key.expose().to_owned(),
        session_token.as_ref().map(|t| t.expose().to_owned()),
    )
}

const SECRET: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const TOKEN: &str = "FwoGZXIvYXdzEXAMPLETOKEN";

#[test]
fn secrets_from_files() {
    let dir = tempfile::tempdir().unwrap();
    // `echo secret > file` leaves a newline, some editors a CRLF: neither is part of the secret.
    let key_file = secret_file(dir.path(), "key", &format!("{SECRET}\n\n"));
    let token_file = secret_file(dir.path(), "token", &format!("{TOKEN}\r\n"));
    let c = load(&[
        ("HITKEEP_S3_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("HITKEEP_S3_SECRET_ACCESS_KEY_FILE", key_file.as_str()),
        ("HITKEEP_S3_SESSION_TOKEN_FILE", token_file.as_str()),
    ]);
    assert_eq!(static_keys(&c), (SECRET.to_owned(), Some(TOKEN.to_owned())));
    assert_eq!(
        *c.origin(Key::S3SecretAccessKey),
        Origin::SecretFile(key_file.clone().into())
    );
    assert_eq!(*c.origin(Key::S3SecretAccessKeyFile), Origin::Env);
    // Spaces inside or before the end are the secret's own; only trailing newlines go.
    let spaced = secret_file(dir.path(), "spaced", " a b \n");
    let c = load(&[
        ("HITKEEP_S3_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("HITKEEP_S3_SECRET_ACCESS_KEY_FILE", spaced.as_str()),
    ]);
    assert_eq!(static_keys(&c), (" a b ".to_owned(), None));

    // The file key in a TOML file and a flag work the same way.
    let toml = dir.path().join("hitkeep.toml");
    std::fs::write(
        &toml,
        format!("s3_access_key_id = \"AKIAIOSFODNN7EXAMPLE\"\ns3_secret_access_key_file = \"{key_file}\"\n"),
    )
    .unwrap();
    let c = Config::load(&Sources {
        config_file: Some(toml),
        flags: [(Key::S3SessionTokenFile, token_file.clone())].into(),
        ..Sources::default()
    })
    .unwrap();
    assert_eq!(static_keys(&c), (SECRET.to_owned(), Some(TOKEN.to_owned())));
    assert_eq!(*c.origin(Key::S3SessionTokenFile), Origin::Flag);
}

#[test]
fn a_secret_and_its_file_together_are_an_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = secret_file(dir.path(), "key", SECRET);
    let e = load_err(&[
        ("HITKEEP_S3_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("HITKEEP_S3_SECRET_ACCESS_KEY", SECRET),
        ("HITKEEP_S3_SECRET_ACCESS_KEY_FILE", key_file.as_str()),
    ]);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].key, Some(Key::S3SecretAccessKeyFile));
    assert_eq!(
        e.errors[0].to_string(),
        format!(
            "error: HITKEEP_S3_SECRET_ACCESS_KEY_FILE (--s3-secret-access-key-file) = {key_file:?} (env HITKEEP_S3_SECRET_ACCESS_KEY_FILE): \
             HITKEEP_S3_SECRET_ACCESS_KEY (--s3-secret-access-key) is set as well (env HITKEEP_S3_SECRET_ACCESS_KEY); a secret comes from one of them only\n  \
             fix: unset HITKEEP_S3_SECRET_ACCESS_KEY or HITKEEP_S3_SECRET_ACCESS_KEY_FILE"
        )
    );
    assert!(!format!("{e} {e:?}").contains(SECRET));

    // From different layers too: the token in the config file, its file as a flag. Both secrets'
    // problems are reported at once.
    let toml = dir.path().join("hitkeep.toml");
    std::fs::write(&toml, format!("s3_session_token = \"{TOKEN}\"\n")).unwrap();
    let e = Config::load(&Sources {
        config_file: Some(toml.clone()),
        env: [
            ("HITKEEP_S3_ACCESS_KEY_ID".to_owned(), "AKIA1234".to_owned()),
            ("HITKEEP_S3_SECRET_ACCESS_KEY".to_owned(), SECRET.to_owned()),
            (
                "HITKEEP_S3_SECRET_ACCESS_KEY_FILE".to_owned(),
                key_file.clone(),
            ),
        ]
        .into(),
        flags: [(Key::S3SessionTokenFile, key_file.clone())].into(),
    })
    .unwrap_err();
    let keys: Vec<_> = e.errors.iter().filter_map(|p| p.key).collect();
    assert_eq!(
        keys,
        [Key::S3SecretAccessKeyFile, Key::S3SessionTokenFile],
        "{e}"
    );
    assert!(
        e.to_string().contains(&format!(
            "HITKEEP_S3_SESSION_TOKEN (--s3-session-token) is set as well (config file {})",
            toml.display()
        )),
        "{e}"
    );
    assert!(!format!("{e} {e:?}").contains(SECRET) && !format!("{e:?}").contains(TOKEN));
}

#[test]
fn an_unreadable_or_empty_secret_file_is_an_error_naming_the_setting_and_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing").display().to_string();
    let empty = secret_file(dir.path(), "empty", "\n");
    let not_text = dir.path().join("binary");
    // Not UTF-8: the error must not echo the bytes, which may be most of a secret.
    std::fs::write(&not_text, b"wJalrXUtnFEMI\xff\xfe").unwrap();
    let not_text = not_text.display().to_string();
    let folder = dir.path().display().to_string();
    for (path, why) in [
        (&missing, "No such file"),
        (&empty, "is empty"),
        (&not_text, "valid UTF-8"),
        (&folder, "directory"),
    ] {
        let e = load_err(&[
            ("HITKEEP_S3_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
            ("HITKEEP_S3_SECRET_ACCESS_KEY_FILE", path.as_str()),
        ]);
        assert_eq!(e.errors.len(), 1, "{path}: {e}");
        let shown = e.errors[0].to_string();
        assert!(
            shown.starts_with(
                "error: HITKEEP_S3_SECRET_ACCESS_KEY_FILE (--s3-secret-access-key-file) = "
            ) && shown.contains(&path.to_string())
                && shown.contains(why),
            "{path}: {shown}"
        );
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
    }
}

#[test]
fn a_secret_from_a_file_never_shows() {
    let dir = tempfile::tempdir().unwrap();
    let key_file = secret_file(dir.path(), "key", &format!("{SECRET}\n"));
    let token_file = secret_file(dir.path(), "token", TOKEN);
    let c = load(&[
        ("HITKEEP_S3_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("HITKEEP_S3_SECRET_ACCESS_KEY_FILE", key_file.as_str()),
        ("HITKEEP_S3_SESSION_TOKEN_FILE", token_file.as_str()),
    ]);
    let text = c.render_text();
    let json = c.render_json().to_string();
    for shown in [&text, &json, &format!("{c:?}")] {
        assert!(!shown.contains(SECRET) && !shown.contains(TOKEN), "{shown}");
    }
    let line = |env: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{env} ")))
            .unwrap_or_else(|| panic!("no {env} in {text}"))
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        line("HITKEEP_S3_SECRET_ACCESS_KEY"),
        format!("HITKEEP_S3_SECRET_ACCESS_KEY = [redacted] (file {key_file})")
    );
    assert_eq!(
        line("HITKEEP_S3_SECRET_ACCESS_KEY_FILE"),
        format!(
            "HITKEEP_S3_SECRET_ACCESS_KEY_FILE = {key_file} (env HITKEEP_S3_SECRET_ACCESS_KEY_FILE)"
        )
    );
    assert_eq!(
        line("HITKEEP_S3_SESSION_TOKEN"),
        format!("HITKEEP_S3_SESSION_TOKEN = [redacted] (file {token_file})")
    );
    let settings = c.render_json()["settings"].clone();
    let token = settings
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["env"] == "HITKEEP_S3_SESSION_TOKEN")
        .unwrap()
        .clone();
    assert_eq!(token["value"], "[redacted]");
    assert_eq!(
        token["origin"],
        serde_json::json!({ "kind": "secret-file", "detail": token_file })
    );
    // Unset, the file settings show as unset.
    let plain = load(&[]);
    assert_eq!(plain.display_value(Key::S3SecretAccessKeyFile), None);
}

/// The scheduler runs for days: a secret on its command line is readable in `ps` all that time.
#[test]
fn secrets_given_as_flags_are_pointed_out_for_long_running_processes() {
    let flags = [
        (Key::S3AccessKeyId, "AKIAIOSFODNN7EXAMPLE".to_owned()),
        (Key::S3SecretAccessKey, SECRET.to_owned()),
        (Key::S3SessionToken, TOKEN.to_owned()),
    ];
    let c = Config::load(&Sources {
        flags: flags.into(),
        ..Sources::default()
    })
    .unwrap();
    let warnings: Vec<String> = c
        .secrets_on_command_line()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        warnings,
        [
            "warning: HITKEEP_S3_SECRET_ACCESS_KEY (--s3-secret-access-key): given as the flag --s3-secret-access-key, it is visible in `ps` for the scheduler's whole life\n  fix: use HITKEEP_S3_SECRET_ACCESS_KEY_FILE (a file only this user can read), or the variable HITKEEP_S3_SECRET_ACCESS_KEY",
            "warning: HITKEEP_S3_SESSION_TOKEN (--s3-session-token): given as the flag --s3-session-token, it is visible in `ps` for the scheduler's whole life\n  fix: use HITKEEP_S3_SESSION_TOKEN_FILE (a file only this user can read), or the variable HITKEEP_S3_SESSION_TOKEN",
        ]
    );
    let from_env = load(&[
        ("HITKEEP_S3_ACCESS_KEY_ID", "AKIAIOSFODNN7EXAMPLE"),
        ("HITKEEP_S3_SECRET_ACCESS_KEY", SECRET),
    ]);
    assert!(from_env.secrets_on_command_line().is_empty());
}

// Heartbeat and failure notification URLs: secrets whose path or query is the token.

const PING: &str = "https://hc-ping.com/5c6644da-ef00-45e6-825d-c755d19d7f9f";
const PING_TOKEN: &str = "5c6644da-ef00-45e6-825d-c755d19d7f9f";
const WEBHOOK: &str = "http://user:pw@kuma.lan:3001/api/push/Tok3nXYZ?status=down&msg=x";

#[test]
fn notification_urls_show_only_scheme_and_host() {
    let c = load(&[
        ("HITKEEP_BACKUP_PATH", "/var/lib/hitkeep/backups"),
        ("HITKEEP_BACKUP_HEARTBEAT_URL", PING),
        ("HITKEEP_BACKUP_FAILURE_URL", WEBHOOK),
    ]);
    let backup = &c.settings.backup;
    assert_eq!(backup.heartbeat_url.as_ref().unwrap().expose(), PING);
    assert_eq!(backup.failure_url.as_ref().unwrap().expose(), WEBHOOK);
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
    assert_eq!(
        c.display_value(Key::BackupHeartbeatUrl).as_deref(),
        Some("https://hc-ping.com/…")
    );
    assert_eq!(
        c.display_value(Key::BackupFailureUrl).as_deref(),
        Some("http://kuma.lan:3001/…")
    );
    let shown = format!(
        "{c:?} {:#?} {} {}",
        c.settings,
        c.render_text(),
        c.render_json()
    );
    for secret in [
        PING_TOKEN,
        "Tok3nXYZ",
        "status=down",
        "user:pw",
        "/api/push",
    ] {
        assert!(!shown.contains(secret), "{secret} in {shown}");
    }
    assert!(c.render_text().contains(
        "HITKEEP_BACKUP_HEARTBEAT_URL      = https://hc-ping.com/…  (env HITKEEP_BACKUP_HEARTBEAT_URL)"
    ));
    // A secret like the S3 key: as a flag it is pointed out, the file setting offered instead.
    let c = Config::load(&Sources {
        flags: [(Key::BackupHeartbeatUrl, PING.to_owned())].into(),
        ..env(&[("HITKEEP_BACKUP_PATH", "/var/lib/hitkeep/backups")])
    })
    .unwrap();
    let warnings: Vec<String> = c
        .secrets_on_command_line()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].contains("fix: use HITKEEP_BACKUP_HEARTBEAT_URL_FILE"),
        "{warnings:?}"
    );
    assert!(!warnings[0].contains(PING_TOKEN));
}

#[test]
fn a_notification_url_that_is_not_an_http_url_is_an_error_naming_the_setting() {
    let e = load_err(&[
        ("HITKEEP_BACKUP_PATH", "/var/lib/hitkeep/backups"),
        (
            "HITKEEP_BACKUP_HEARTBEAT_URL",
            "hc-ping.com/5c6644da-ef00-45e6-825d-c755d19d7f9f",
        ),
        (
            "HITKEEP_BACKUP_FAILURE_URL",
            "ftp://hooks.example.com/Tok3nXYZ",
        ),
    ]);
    let keys: Vec<_> = e.errors.iter().filter_map(|p| p.key).collect();
    assert_eq!(
        keys,
        [Key::BackupHeartbeatUrl, Key::BackupFailureUrl],
        "{e}"
    );
    assert_eq!(
        e.errors[0].to_string(),
        "error: HITKEEP_BACKUP_HEARTBEAT_URL (--backup-heartbeat-url) = \"[redacted]\" (env HITKEEP_BACKUP_HEARTBEAT_URL): \
         not a URL (relative URL without a base)\n  \
         fix: write the whole ping URL the monitor gives, e.g. https://hc-ping.com/<uuid>"
    );
    assert!(
        e.errors[1]
            .to_string()
            .contains("not an http:// or https:// URL"),
        "{e}"
    );
    let text = format!("{e} {e:?}");
    assert!(
        !text.contains(PING_TOKEN) && !text.contains("Tok3nXYZ"),
        "{text}"
    );
}

#[test]
fn notification_urls_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let ping = secret_file(dir.path(), "ping", &format!("{PING}\n"));
    let c = load(&[
        ("HITKEEP_BACKUP_PATH", "/var/lib/hitkeep/backups"),
        ("HITKEEP_BACKUP_HEARTBEAT_URL_FILE", ping.as_str()),
    ]);
    assert_eq!(
        c.settings.backup.heartbeat_url.as_ref().unwrap().expose(),
        PING
    );
    assert_eq!(
        *c.origin(Key::BackupHeartbeatUrl),
        Origin::SecretFile(ping.clone().into())
    );
    assert!(c.render_text().contains(&format!(
        "HITKEEP_BACKUP_HEARTBEAT_URL      = https://hc-ping.com/…  (file {ping})"
    )));

    // A file that does not hold a URL: the error names the file setting, never the content.
    let bad = secret_file(dir.path(), "bad", "5c6644da-ef00-45e6-825d-c755d19d7f9f\n");
    let e = load_err(&[
        ("HITKEEP_BACKUP_PATH", "/var/lib/hitkeep/backups"),
        ("HITKEEP_BACKUP_FAILURE_URL_FILE", bad.as_str()),
    ]);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].key, Some(Key::BackupFailureUrlFile));
    let shown = e.errors[0].to_string();
    assert!(
        shown.contains(&bad) && shown.contains("the file's content is not a URL"),
        "{shown}"
    );
    assert!(!format!("{e} {e:?}").contains(PING_TOKEN));

    // Never both ways.
    let e = load_err(&[
        ("HITKEEP_BACKUP_PATH", "/var/lib/hitkeep/backups"),
        ("HITKEEP_BACKUP_HEARTBEAT_URL", PING),
        ("HITKEEP_BACKUP_HEARTBEAT_URL_FILE", ping.as_str()),
    ]);
    assert_eq!(e.errors.len(), 1, "{e}");
    assert_eq!(e.errors[0].key, Some(Key::BackupHeartbeatUrlFile));
    assert!(!format!("{e} {e:?}").contains(PING_TOKEN));
}

#[test]
fn notification_urls_without_backups_warn() {
    let dir = tempfile::tempdir().unwrap();
    let ping = secret_file(dir.path(), "ping", PING);
    let c = load(&[
        ("HITKEEP_BACKUP_HEARTBEAT_URL_FILE", ping.as_str()),
        ("HITKEEP_BACKUP_FAILURE_URL", WEBHOOK),
    ]);
    assert_eq!(
        warning_keys(&c),
        [Key::BackupHeartbeatUrlFile, Key::BackupFailureUrl]
    );
    assert!(
        c.warnings
            .iter()
            .all(|w| w.message.contains("backups are disabled")),
        "{:?}",
        c.warnings
    );
    assert!(!format!("{:?}", c.warnings).contains("Tok3nXYZ"));
}

/// Recipients from the setting and a file, each parsed; an identity file checked to exist; a private
/// key anywhere among them refused without its value; either backup mode encrypted.
#[test]
fn encryption_settings_are_checked_and_never_echo_a_private_key() {
    use age::secrecy::ExposeSecret as _;
    let dir = tempfile::tempdir().unwrap();
    let keys: Vec<age::x25519::Identity> =
        (0..3).map(|_| age::x25519::Identity::generate()).collect();
    let public: Vec<String> = keys.iter().map(|k| k.to_public().to_string()).collect();
    let secret = keys[0].to_string().expose_secret().to_owned();
    let listed = dir.path().join("recipients.txt");
    std::fs::write(&listed, format!("# the offline key\n{}\n\n", public[2])).unwrap();
    let identity = dir.path().join("key.txt");
    std::fs::write(&identity, format!("{secret}\n")).unwrap();
    let (listed, identity) = (listed.display().to_string(), identity.display().to_string());

    let two = format!("{}, {}", public[0], public[1]);
    let c = load(&[
        ("HITKEEP_BACKUP_RECIPIENTS", two.as_str()),
        ("HITKEEP_BACKUP_RECIPIENTS_FILE", listed.as_str()),
        ("HITKEEP_BACKUP_IDENTITY_FILE", identity.as_str()),
    ]);
    assert_eq!(c.settings.backup.recipients, public);
    assert_eq!(
        c.settings.backup.identity_file.as_deref(),
        Some(std::path::Path::new(&identity))
    );
    let shown = c.render_text();
    assert!(
        shown.contains(&public[1]) && shown.contains("key.txt"),
        "{shown}"
    );
    assert!(!shown.contains(&secret[16..]), "{shown}");

    let one_bad = format!("{},age1nope", public[0]);
    let bad = load_err(&[("HITKEEP_BACKUP_RECIPIENTS", one_bad.as_str())]);
    assert_eq!(bad.errors[0].key, Some(Key::BackupRecipients));
    assert!(bad.to_string().contains("age1nope"), "{bad}");
    let missing = load_err(&[("HITKEEP_BACKUP_IDENTITY_FILE", "/nonexistent/key.txt")]);
    assert_eq!(missing.errors[0].key, Some(Key::BackupIdentityFile));
    let incremental = load(&[
        ("HITKEEP_BACKUP_RECIPIENTS", public[0].as_str()),
        ("HITKEEP_BACKUP_MODE", "incremental"),
    ]);
    assert_eq!(incremental.settings.backup.recipients, public[..1]);
    // Tenant keys are wrapped to the recipients: without any, the setting is refused.
    let keyed = load(&[
        ("HITKEEP_BACKUP_RECIPIENTS", public[0].as_str()),
        ("HITKEEP_BACKUP_TENANT_KEYS", "true"),
    ]);
    assert!(keyed.settings.backup.tenant_keys);
    let unwrapped = load_err(&[("HITKEEP_BACKUP_TENANT_KEYS", "yes")]);
    assert_eq!(unwrapped.errors[0].key, Some(Key::BackupTenantKeys));
    assert!(
        unwrapped.to_string().contains("HITKEEP_BACKUP_RECIPIENTS"),
        "{unwrapped}"
    );

    // A path may say "secret key"; a file's bad line is named by number, never shown.
    let named = dir.path().join("age-secret-key-prod");
    std::fs::write(&named, format!("{secret}\n")).unwrap();
    let named = named.display().to_string();
    let c = load(&[("HITKEEP_BACKUP_IDENTITY_FILE", named.as_str())]);
    assert!(c.settings.backup.identity_file.is_some());
    let ssh = dir.path().join("id_ed25519");
    std::fs::write(
        &ssh,
        "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n",
    )
    .unwrap();
    let ssh = ssh.display().to_string();
    let e = load_err(&[("HITKEEP_BACKUP_RECIPIENTS_FILE", ssh.as_str())]);
    assert!(e.to_string().contains("line 1"), "{e}");
    assert!(
        !format!("{e} {e:?}").contains("b3BlbnNzaC1rZXktdjEAAAAA"),
        "{e}"
    );

    let in_file = dir.path().join("oops.txt");
    std::fs::write(
        &in_file,
        format!("{}\n{}\n", public[1], secret.to_lowercase()),
    )
    .unwrap();
    let in_file = in_file.display().to_string();
    for (key, value) in [
        (
            "HITKEEP_BACKUP_RECIPIENTS",
            format!("{},\"{secret}\"", public[0]),
        ),
        ("HITKEEP_BACKUP_RECIPIENTS_FILE", in_file),
        ("HITKEEP_BACKUP_IDENTITY_FILE", secret.clone()),
    ] {
        let e = load_err(&[(key, value.as_str())]);
        let all = format!("{e} {e:?}").to_ascii_uppercase();
        assert!(all.contains("PRIVATE KEY"), "{key}: {e}");
        assert!(
            !all.contains(&secret[16..]),
            "{key} echoes the private key: {e}"
        );
    }
}
