//! HitKeep usually runs in a container: a restore started from a sibling container (`docker run
//! --rm -v data:/data … recover restore-backup -yes`) lives in another PID namespace than the server
//! that holds the database, and must still see that the database is in use.

use std::path::Path;

use anyhow::{Context, Result, ensure};

use super::Ctx;
use super::faults::tree;

/// A new PID namespace with its own /proc, as a container has.
const UNSHARE: [&str; 4] = ["unshare", "--pid", "--fork", "--mount-proc"];

/// A backup, then a restore run under `unshare -pf --mount-proc` while a DuckDB outside holds the
/// shared database for writing: refused, nothing changed. The S3 secret comes from a file
/// (`HITKEEP_S3_SECRET_ACCESS_KEY_FILE`) throughout, as container secrets are mounted.
pub fn restore_across_namespaces(ctx: &mut Ctx) -> Result<()> {
    let (dir, name) = (ctx.dir("namespaces")?, "namespaces");
    let secret_file = ctx.work.join("s3-secret");
    std::fs::write(&secret_file, format!("{}\n", ctx.s3.secret_key))?;
    let secret_path = secret_file.display().to_string();
    let env = ctx
        .s3_env_at(name)
        .unset("HITKEEP_S3_SECRET_ACCESS_KEY")
        .set("HITKEEP_S3_SECRET_ACCESS_KEY_FILE", &secret_path);
    secret_from_file(ctx, &dir, &env, &secret_path)?;
    ctx.demo(&dir, &env, 2000, 1)?;
    let out = ctx.hk(&dir, &env, &["backup", "run"])?;
    ctx.report.check(
        "backup run with the S3 secret read from HITKEEP_S3_SECRET_ACCESS_KEY_FILE",
        out.ok(),
        out.brief(),
    );
    ensure!(out.ok(), "no backup to restore");
    let (from, region) = (
        ctx.s3.url(&format!("{name}/backups")),
        ctx.s3.region.clone(),
    );
    let args = [
        "recover",
        "restore-backup",
        "-from",
        from.as_str(),
        "-s3-region",
        region.as_str(),
        "-yes",
    ];

    let db = dir.join("hitkeep.db");
    let mut holder = ctx.py.hold(&db)?;
    // Read while held: the holder's connection is open, and nothing here takes a lock.
    let before = tree(&dir)?;
    let out = ctx.hk.run_wrapped(&UNSHARE, &dir, &env, &args);
    let after = tree(&dir);
    drop(holder.stdin.take());
    holder.wait()?;
    let (out, after) = (out?, after?);
    let message = out.message();
    ctx.report.check(
        "a restore in another PID namespace is refused while a process outside holds the database",
        !out.ok()
            && message.contains("is in use by another process")
            && message.contains("another PID namespace"),
        format!("{}\n{message}", out.brief()),
    );
    let aside: Vec<_> = after
        .keys()
        .filter(|p| p.to_string_lossy().contains(".pre-restore."))
        .collect();
    ctx.report.check(
        "the refused restore left every file byte for byte as it was, and nothing aside",
        after == before && aside.is_empty(),
        format!("changed: {:?}; aside: {aside:?}", changed(&before, &after)),
    );

    // The same command once the holder has gone: the namespace alone is no reason to refuse.
    let fp = ctx.fingerprint(&dir)?;
    let out = ctx.hk.run_wrapped(&UNSHARE, &dir, &env, &args)?;
    let restored = ctx.fingerprint(&dir)?;
    ctx.report.check(
        "the same restore in that namespace goes ahead once the holder has closed the database",
        out.ok() && restored == fp,
        format!("{}\n{}", out.brief(), super::tools::diff(&restored, &fp)),
    );
    Ok(())
}

/// `config show` names the file and never the secret.
fn secret_from_file(ctx: &mut Ctx, dir: &Path, env: &super::Env, path: &str) -> Result<()> {
    let out = ctx.hk(dir, env, &["config", "show"])?;
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("HITKEEP_S3_SECRET_ACCESS_KEY "))
        .context("config show has no HITKEEP_S3_SECRET_ACCESS_KEY line")?;
    ctx.report.check(
        "config show: the secret redacted, with the file it came from",
        out.ok()
            && line.contains("[redacted]")
            && line.contains(&format!("(file {path})"))
            && !out.stdout.contains(&ctx.s3.secret_key),
        line,
    );
    Ok(())
}

fn changed(
    before: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
    after: &std::collections::BTreeMap<std::path::PathBuf, Vec<u8>>,
) -> Vec<std::path::PathBuf> {
    before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .cloned()
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}
