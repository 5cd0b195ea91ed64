//! `hitkeep config show` and `hitkeep config check`, and how bad input is refused.

use crate::hitkeep_snapshot;

const MINIO: &[(&str, &str)] = &[
    ("HITKEEP_BACKUP_PATH", "s3://hitkeep/backups"),
    ("HITKEEP_ARCHIVE_PATH", "s3://hitkeep/archive"),
    ("HITKEEP_S3_ACCESS_KEY_ID", "minioadmin"),
    ("HITKEEP_S3_SECRET_ACCESS_KEY", "minioadmin-secret"),
    ("HITKEEP_S3_ENDPOINT", "localhost:9000"),
    ("HITKEEP_S3_URL_STYLE", "path"),
    ("HITKEEP_S3_USE_SSL", "false"),
    ("HITKEEP_S3_REGION", "us-east-1"),
];

#[test]
fn show_defaults() {
    hitkeep_snapshot!("show_defaults", &["config", "show"], &[]);
}

#[test]
fn show_minio_guide_example_masks_secrets() {
    let out = hitkeep_snapshot!("show_minio", &["config", "show"], MINIO);
    assert!(!out.contains("minioadmin-secret"));
}

#[test]
fn show_json_with_session_token() {
    let mut env = MINIO.to_vec();
    env.push(("HITKEEP_S3_SESSION_TOKEN", "FwoGZXIvYXdzSECRET"));
    let out = hitkeep_snapshot!("show_json", &["config", "show", "--json"], &env);
    assert!(!out.contains("FwoGZXIvYXdzSECRET") && !out.contains("minioadmin-secret"));
}

#[test]
fn flags_override_env_in_go_and_gnu_spellings() {
    let out = hitkeep_snapshot!(
        "show_flags",
        &[
            "config",
            "show",
            "-s3-region",
            "eu-central-1",
            "-s3-use-ssl=false",
            "--backup-interval",
            "15",
            "-db",
            "/srv/hitkeep.db"
        ],
        &[
            ("HITKEEP_S3_REGION", "us-west-2"),
            ("HITKEEP_BACKUP_INTERVAL", "60")
        ]
    );
    assert!(out.contains("eu-central-1  (flag --s3-region)"));
}

#[test]
fn check_clean() {
    hitkeep_snapshot!("check_clean", &["config", "check"], MINIO);
}

#[test]
fn check_warnings_exit_1() {
    hitkeep_snapshot!(
        "check_warnings",
        &["config", "check"],
        &[
            ("HITKEEP_ARCHIVE_PATH", "s3://hitkeep/archive"),
            ("HITKEEP_S3_ENDPOINT", "http://127.0.0.1:9000")
        ]
    );
}

#[test]
fn check_errors_exit_2_and_reports_all() {
    let out = hitkeep_snapshot!(
        "check_errors",
        &["config", "check"],
        &[
            ("HITKEEP_BACKUP_PATH", "s3://hitkeep/data"),
            ("HITKEEP_ARCHIVE_PATH", "s3://hitkeep/data/archive"),
            ("HITKEEP_BACKUP_INTERVAL", "0"),
            ("HITKEEP_BACKUP_RETENTION", "0"),
            ("HITKEEP_S3_USE_SSL", "maybe"),
            ("HITKEEP_S3_CHECKSUM", "sha256"),
            ("HITKEEP_S3_SECRET_ACCESS_KEY", "only-the-secret"),
            ("HITKEEP_S3_ENDPOINT", "abc.r2.cloudflarestorage.com"),
            ("HITKEEP_S3_REGION", "eu-central-1"),
        ]
    );
    assert!(!out.contains("only-the-secret"));
}

#[test]
fn check_json() {
    hitkeep_snapshot!(
        "check_json",
        &["config", "check", "--json"],
        &[("HITKEEP_S3_URL_STYLE", "sideways")]
    );
}

#[test]
fn show_with_bad_config_exits_2_and_prints_nothing_on_stdout() {
    let out = hitkeep_snapshot!(
        "show_bad",
        &["config", "show"],
        &[("HITKEEP_BACKUP_RETENTION", "-3")]
    );
    assert!(out.contains("exit: 2\n----- stdout -----\n----- stderr"));
}

#[test]
fn config_file_from_flag() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("hitkeep.toml");
    std::fs::write(
        &file,
        "backup_path = \"/srv/backups\"\nbackup_retention = 3\n",
    )
    .unwrap();
    let out = crate::run(
        &["config", "show", "--config", file.to_str().unwrap()],
        &[],
        dir.path(),
    );
    assert!(out.starts_with("exit: 0"), "{out}");
    assert!(
        out.contains(&format!(
            "HITKEEP_BACKUP_RETENTION          = 3  (config file {})",
            file.display()
        )),
        "{out}"
    );
    let out = crate::run(
        &["config", "check", "--config", "missing.toml"],
        &[],
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 2") && out.contains("missing.toml"),
        "{out}"
    );
}

#[test]
fn unknown_flag_is_a_usage_error() {
    hitkeep_snapshot!("unknown_flag", &["config", "show", "--s3-regoin", "x"], &[]);
}

#[test]
fn completions_for_every_shell() {
    let dir = tempfile::tempdir().unwrap();
    for shell in ["bash", "zsh", "fish"] {
        let out = crate::run(&["completions", shell], &[], dir.path());
        assert!(
            out.starts_with("exit: 0")
                && out.contains("restore-backup")
                && out.contains("s3-region"),
            "{shell}: {}",
            &out[..out.len().min(300)]
        );
    }
    let out = crate::run(&["completions", "tcsh"], &[], dir.path());
    assert!(out.starts_with("exit: 2"), "{out}");
}

/// Every command's --help ends with an example to copy.
#[test]
fn every_command_help_has_an_example() {
    let dir = tempfile::tempdir().unwrap();
    let commands: &[&[&str]] = &[
        &[],
        &["config"],
        &["config", "show"],
        &["config", "check"],
        &["backup"],
        &["backup", "run"],
        &["backup", "list"],
        &["backup", "verify"],
        &["backup", "status"],
        &["backup", "prune"],
        &["backup", "lifecycle"],
        &["serve"],
        &["demo"],
        &["archive"],
        &["archive", "run"],
        &["archive", "list"],
        &["archive", "query"],
        &["archive", "restore"],
        &["recover"],
        &["recover", "restore-backup"],
        &["completions"],
        &["doctor"],
    ];
    for path in commands {
        let mut args = path.to_vec();
        args.push("--help");
        let out = crate::run(&args, &[], dir.path());
        assert!(
            out.starts_with("exit: 0") && out.contains("Example"),
            "{path:?}: {out}"
        );
    }
}

/// HitKeep's YAML file as the server has it, with keys only the server uses.
const HITKEEP_YAML: &str = "\
# data settings
db-compact-on-start: true
db-auto-recover: true
db-checkpoint-interval: 5
# backups settings
backup-path: s3://hitkeep/backups
backup-retention: 48
# s3 settings
s3-access-key-id: minioadmin
s3-secret-access-key: minioadmin-secret
s3-endpoint: localhost:9000
s3-url-style: path
s3-use-ssl: false
s3-region: us-east-1
archive-path: s3://hitkeep/archive
# email settings
mail-host: smtp.example.com
mail-port: 587
";

/// Runs `hitkeep --config hitkeep.yaml ARGS` with `yaml` in that file, and snapshots the run.
fn yaml_snapshot(name: &str, yaml: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hitkeep.yaml"), yaml).unwrap();
    let mut argv = vec!["--config", "hitkeep.yaml"];
    argv.extend(args);
    let output = crate::run(&argv, env, dir.path());
    insta::with_settings!({ prepend_module_to_snapshot => false }, {
        insta::assert_snapshot!(name, output);
    });
    output
}

#[test]
fn hitkeep_yaml_check_clean() {
    let out = yaml_snapshot("yaml_check_clean", HITKEEP_YAML, &["config", "check"], &[]);
    assert!(!out.contains("minioadmin-secret"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hitkeep.yml"), HITKEEP_YAML).unwrap();
    let out = crate::run(
        &["config", "show"],
        &[
            ("HITKEEP_CONFIG", "hitkeep.yml"),
            ("HITKEEP_BACKUP_RETENTION", "12"),
        ],
        dir.path(),
    );
    assert!(out.starts_with("exit: 0"), "{out}");
    assert!(
        out.contains("HITKEEP_BACKUP_RETENTION          = 12  (env HITKEEP_BACKUP_RETENTION)")
            && out.contains("= us-east-1  (config file hitkeep.yml)"),
        "env beats the file, the file beats the default: {out}"
    );
}

#[test]
fn hitkeep_yaml_unknown_key_exits_2() {
    let yaml = format!("{HITKEEP_YAML}s3-regoin: eu-central-1\n");
    let out = yaml_snapshot("yaml_unknown_key", &yaml, &["config", "check"], &[]);
    assert!(!out.contains("eu-central-1"));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hitkeep.yaml"), "backup-path:\n  s3: x\n").unwrap();
    let out = crate::run(
        &["--config", "hitkeep.yaml", "backup", "list"],
        &[],
        dir.path(),
    );
    assert!(
        out.starts_with("exit: 2\n----- stdout -----\n----- stderr -----\n")
            && out.contains("`backup-path` has a mapping"),
        "{out}"
    );
}

/// The environment is shared with the HitKeep server: its variables and unrelated ones pass quietly, a
/// near miss of one of ours is pointed out (never with its value).
#[test]
fn check_near_miss_variables_warn() {
    let env = [
        ("HITKEEP_BACKUP_RETENTON", "48"),
        ("HITKEEP_S3_SECRET_KEY", "wJalrXUtnFEMI-secret"),
        ("HITKEEP_DB_COMPACT_ON_START", "true"),
        ("HITKEEP_JWT_SECRET", "jwt-secret"),
        ("HITKEEP_FOO", "x"),
    ];
    let out = hitkeep_snapshot!("check_near_miss", &["config", "check"], &env);
    assert!(!out.contains("wJalrXUtnFEMI") && !out.contains("jwt-secret"));
    let dir = tempfile::tempdir().unwrap();
    let out = crate::run(&["config", "show"], &env, dir.path());
    assert!(
        out.starts_with("exit: 0")
            && out.contains("----- stderr -----\nwarning: HITKEEP_BACKUP_RETENTON is set")
            && !out.contains("wJalrXUtnFEMI"),
        "other commands print the warning on stderr and run: {out}"
    );
}

/// A secret comes from its variable or from the file `_FILE` names, never both: exit 2 naming both,
/// and never the secret.
#[test]
fn a_secret_and_its_file_together_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("s3-secret");
    std::fs::write(&file, "minioadmin-secret\n").unwrap();
    let file = file.display().to_string();
    let mut env = MINIO.to_vec();
    env.push(("HITKEEP_S3_SECRET_ACCESS_KEY_FILE", file.as_str()));
    for args in [&["config", "check"][..], &["backup", "list"]] {
        let out = crate::run(args, &env, dir.path());
        assert!(
            out.starts_with("exit: 2")
                && out.contains("HITKEEP_S3_SECRET_ACCESS_KEY_FILE (--s3-secret-access-key-file)")
                && out.contains(
                    "HITKEEP_S3_SECRET_ACCESS_KEY (--s3-secret-access-key) is set as well"
                )
                && out.contains(&file),
            "{args:?}: {out}"
        );
        assert!(!out.contains("minioadmin-secret"), "{out}");
    }
    // The file alone is the secret: shown redacted, from the file.
    env.retain(|(k, _)| *k != "HITKEEP_S3_SECRET_ACCESS_KEY");
    let out = crate::run(&["config", "show"], &env, dir.path());
    assert!(
        out.starts_with("exit: 0")
            && out.contains(&format!(
                "HITKEEP_S3_SECRET_ACCESS_KEY      = [redacted]  (file {file})"
            ))
            && !out.contains("minioadmin-secret"),
        "{out}"
    );
}

/// The scheduler runs for days with its command line in `ps`: a secret given as a flag is pointed
/// out there, and only there.
#[test]
fn the_scheduler_warns_about_a_secret_given_as_a_flag() {
    use std::io::BufRead as _;
    let dir = tempfile::tempdir().unwrap();
    let flags = [
        "-s3-access-key-id",
        "minioadmin",
        "-s3-secret-access-key",
        "minioadmin-secret",
    ];
    let mut serve = std::process::Command::new(env!("CARGO_BIN_EXE_hitkeep"))
        .arg("serve")
        .args(flags)
        .env_clear()
        .current_dir(dir.path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread, so a scheduler that never warns fails the test instead of hanging it.
    let stderr = std::io::BufReader::new(serve.stderr.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut seen = Vec::new();
    while let Ok(line) = rx.recv_timeout(std::time::Duration::from_secs(30)) {
        let done = line.starts_with("  fix: ");
        seen.push(line);
        if done {
            break;
        }
    }
    serve.kill().unwrap();
    serve.wait().unwrap();
    assert_eq!(
        seen,
        [
            "warning: HITKEEP_S3_SECRET_ACCESS_KEY (--s3-secret-access-key): given as the flag --s3-secret-access-key, it is visible in `ps` for the scheduler's whole life",
            "  fix: use HITKEEP_S3_SECRET_ACCESS_KEY_FILE (a file only this user can read), or the variable HITKEEP_S3_SECRET_ACCESS_KEY",
        ]
    );
    let mut args = vec!["config", "check"];
    args.extend(flags);
    let out = crate::run(&args, &[], dir.path());
    assert!(
        out.starts_with("exit: 0") && !out.contains("visible in `ps`"),
        "a command that ends soon is not warned: {out}"
    );
}
