//! The `hitkeep` binary as a user runs it: exit status, stdout and stderr, pinned by insta snapshots.

mod archive;
mod backup;
mod config;
mod doctor;
mod object_lock;
mod recover;
mod restore;

use std::process::Command;

/// Runs `hitkeep` with exactly `env` as its environment (nothing inherited), in `cwd`.
pub fn run(args: &[&str], env: &[(&str, &str)], cwd: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_hitkeep"))
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .current_dir(cwd)
        .output()
        .expect("run hitkeep");
    let code = out
        .status
        .code()
        .map_or_else(|| "signal".to_owned(), |c| c.to_string());
    format!(
        "exit: {code}\n----- stdout -----\n{}----- stderr -----\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// [`run`] with an owned environment, as the setup helpers build it.
pub fn hk(args: &[&str], env: &[(String, String)], cwd: &std::path::Path) -> String {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    run(args, &env, cwd)
}

/// HitKeep on local disk under `dir`: the databases, backups in `backups/`, archives in `archive/`.
pub fn local_env(dir: &std::path::Path) -> Vec<(String, String)> {
    let path = |p: &str| dir.join(p).display().to_string();
    vec![
        ("HITKEEP_DB_PATH".into(), path("hitkeep.db")),
        ("HITKEEP_DATA_PATH".into(), path("data")),
        ("HITKEEP_BACKUP_PATH".into(), path("backups")),
        ("HITKEEP_ARCHIVE_PATH".into(), path("archive")),
    ]
}

/// The databases under `dir`, backups and archives at `s3://{bucket}/{prefix}` of the test server.
pub fn s3_env(
    dir: &std::path::Path,
    server: &hitkeep_testkit::S3Server,
    bucket: &str,
    backups: &str,
    archive: &str,
) -> Vec<(String, String)> {
    let mut env = local_env(dir);
    env.retain(|(k, _)| k != "HITKEEP_BACKUP_PATH" && k != "HITKEEP_ARCHIVE_PATH");
    env.push((
        "HITKEEP_BACKUP_PATH".into(),
        format!("s3://{bucket}/{backups}"),
    ));
    env.push((
        "HITKEEP_ARCHIVE_PATH".into(),
        format!("s3://{bucket}/{archive}"),
    ));
    env.extend(server.hitkeep_env());
    env
}

/// Snapshots a run, with the temp dir replaced by `[TMP]` so snapshots are stable.
#[macro_export]
macro_rules! hitkeep_snapshot {
    ($name:expr, $args:expr, $env:expr) => {{
        let dir = tempfile::tempdir().unwrap();
        let output = $crate::run($args, $env, dir.path());
        let tmp = $crate::regex_escape(&dir.path().display().to_string());
        insta::with_settings!({ filters => vec![(tmp.as_str(), "[TMP]")], prepend_module_to_snapshot => false }, {
            insta::assert_snapshot!($name, output);
        });
        output
    }};
}

pub fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_ascii_alphanumeric() || c == '/' || c == '_' {
                vec![c]
            } else {
                vec!['\\', c]
            }
        })
        .collect()
}
