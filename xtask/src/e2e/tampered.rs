//! Snapshots are data: `recover restore-backup` and `backup verify --deep` refuse a snapshot whose
//! `schema.sql` was changed to run code, both as HitKeep Go writes snapshots (no manifests) and under a
//! manifest recomputed to match (its digests are not signed). They say which statement, write no file
//! outside their staging folders, and leave the databases byte for byte as they were.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};

use super::hitkeep::{Env, Out};
use super::{Ctx, entries};

pub fn run(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir("tampered")?;
    let backups = dir.join("backups");
    let env = Env::default().set("HITKEEP_BACKUP_PATH", text(&backups)?);
    ctx.demo(&dir, &env, 2_000, 1)?;
    let out = ctx.hk(&dir, &env, &["backup", "run"])?;
    ensure!(out.ok(), "backup run failed: {}", out.brief());
    let id = ctx
        .complete(&dir, &env, "shared")?
        .pop()
        .context("no complete cycle")?;
    let databases = database_bytes(&dir)?;
    ensure!(
        databases.len() >= 2,
        "expected the shared and tenant databases, found {:?}",
        databases.keys()
    );

    // (a) HitKeep Go's shape: no manifests at all, so nothing but the statement check stands in the way.
    let legacy = dir.join("legacy-backups");
    copy_tree(&backups, &legacy)?;
    for path in entries(&legacy)? {
        let name = path.file_name().unwrap_or_default();
        if name == "manifest.json" || name == "in-progress.json" {
            std::fs::remove_file(&path)?;
        }
    }
    let pwned = ctx.work.join("pwned-legacy");
    append(
        &legacy.join(format!("shared/{id}/schema.sql")),
        &format!("COPY (SELECT 42) TO '{}';\n", text(&pwned)?),
    )?;
    let legacy_case = Tampered {
        location: &legacy,
        what: "a legacy snapshot (no manifests)",
        statement: "COPY (SELECT 42) TO",
        outside: &pwned,
    };
    refused(ctx, &dir, &id, &legacy_case, &databases)?;

    // (b) A manifest recomputed to match the changed schema.sql: the digests all check out.
    let consistent = dir.join("consistent-backups");
    copy_tree(&backups, &consistent)?;
    let other = ctx.work.join("other.db");
    let folder = consistent.join(format!("shared/{id}"));
    append(
        &folder.join("schema.sql"),
        &format!(
            "ATTACH '{}' AS other;\nCREATE TABLE other.t AS SELECT 1;\n",
            text(&other)?
        ),
    )?;
    recompute_manifest(&folder, "schema.sql")?;
    let env_consistent = Env::default().set("HITKEEP_BACKUP_PATH", text(&consistent)?);
    let shallow = ctx.hk(
        &dir,
        &env_consistent,
        &["backup", "verify", "-snapshot", &id],
    )?;
    ctx.report.check(
        "the recomputed manifest is consistent: backup verify (not deep) passes",
        shallow.ok(),
        format!("{}\n{}", shallow.brief(), shallow.stdout),
    );
    let consistent_case = Tampered {
        location: &consistent,
        what: "a snapshot under a consistent manifest",
        statement: "ATTACH '",
        outside: &other,
    };
    refused(ctx, &dir, &id, &consistent_case, &databases)
}

/// A tampered copy of the backups: where, what it is, the statement to be named, and the file the
/// statement would create.
struct Tampered<'a> {
    location: &'a Path,
    what: &'a str,
    statement: &'a str,
    outside: &'a Path,
}

/// Restore and `verify --deep` of snapshot `id` in the tampered copy both fail, say why (naming the
/// statement), create neither the statement's file nor any other file in `dir`, and leave every
/// database as it was.
fn refused(
    ctx: &mut Ctx,
    dir: &Path,
    id: &str,
    tampered: &Tampered<'_>,
    databases: &BTreeMap<PathBuf, Vec<u8>>,
) -> Result<()> {
    let Tampered {
        location,
        what,
        statement,
        outside,
    } = *tampered;
    let before = entries(dir)?;
    let env = Env::default().set("HITKEEP_BACKUP_PATH", text(location)?);
    let restore = ctx.restore(dir, &env, text(location)?, Some(id))?;
    let told = said(&restore);
    ctx.report.check(
        format!("{what}: restore exits 1 and names the statement and the file"),
        restore.code == Some(1)
            && told.contains(statement)
            && told.contains(&format!(
                "snapshot shared/{id}: schema.sql holds a statement EXPORT DATABASE never writes"
            ))
            && told.contains("nothing was changed"),
        format!("{}\n{told}", restore.brief()),
    );
    let verify = ctx.hk(dir, &env, &["backup", "verify", "-snapshot", id, "--deep"])?;
    let told = said(&verify);
    // A legacy snapshot cannot be verified at all (nothing to verify against); one with manifests is
    // refused by the statement check.
    let names = if what.contains("legacy") {
        told.contains("only complete snapshots can be verified")
    } else {
        told.contains(statement) && told.contains("EXPORT DATABASE never writes")
    };
    ctx.report.check(
        format!("{what}: backup verify --deep exits non-zero and says why"),
        !verify.ok() && verify.code.is_some() && names,
        format!("{}\n{told}", verify.brief()),
    );
    let after = entries(dir)?;
    let new: Vec<_> = after.difference(&before).collect();
    ctx.report.check(
        format!(
            "{what}: no file written outside staging ({} absent, nothing new)",
            outside.display()
        ),
        !outside.exists() && new.is_empty(),
        format!(
            "{} exists: {}; new: {new:?}",
            outside.display(),
            outside.exists()
        ),
    );
    let now = database_bytes(dir)?;
    ctx.report.check(
        format!("{what}: every database byte-identical"),
        now == *databases,
        format!(
            "changed: {:?}",
            now.iter()
                .filter(|(p, b)| databases.get(*p) != Some(*b))
                .map(|(p, _)| p)
                .collect::<Vec<_>>()
        ),
    );
    Ok(())
}

/// What a run printed (stdout and stderr, logs included).
fn said(out: &Out) -> String {
    format!("{}\n{}", out.stdout, out.stderr)
}

/// Every database file under `dir` (the shared one and `data/tenants/*/hitkeep.db`), with its WAL.
fn database_bytes(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut out = BTreeMap::new();
    for path in entries(dir)? {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let ours = path.strip_prefix(dir)?.starts_with("data") || path.parent() == Some(dir);
        if ours && (name == "hitkeep.db" || name == "hitkeep.db.wal") && path.is_file() {
            out.insert(path.clone(), std::fs::read(&path)?);
        }
    }
    Ok(out)
}

fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for path in entries(from)? {
        let dest = to.join(path.strip_prefix(from)?);
        if path.is_dir() {
            std::fs::create_dir_all(&dest)?;
        } else {
            std::fs::create_dir_all(dest.parent().context("parent")?)?;
            std::fs::copy(&path, &dest)?;
        }
    }
    Ok(())
}

fn append(file: &Path, sql: &str) -> Result<()> {
    let mut text = std::fs::read_to_string(file).with_context(|| file.display().to_string())?;
    text.push_str(sql);
    std::fs::write(file, text)?;
    Ok(())
}

/// `name`'s size and SHA-256 in `folder/manifest.json`, recomputed from the file as it is now.
fn recompute_manifest(folder: &Path, name: &str) -> Result<()> {
    let file = folder.join(name);
    let size = std::fs::metadata(&file)?.len();
    let out = Command::new("sha256sum").arg(&file).output()?;
    ensure!(out.status.success(), "sha256sum {}", file.display());
    let sha256 = String::from_utf8(out.stdout)?
        .split_whitespace()
        .next()
        .context("sha256sum output")?
        .to_owned();
    let manifest = folder.join("manifest.json");
    let mut json: serde_json::Value = serde_json::from_slice(&std::fs::read(&manifest)?)?;
    let entry = json["files"]
        .as_array_mut()
        .context("manifest files")?
        .iter_mut()
        .find(|e| e["name"] == name)
        .with_context(|| format!("{name} in the manifest"))?;
    entry["size"] = size.into();
    entry["sha256"] = sha256.into();
    std::fs::write(&manifest, serde_json::to_vec_pretty(&json)?)?;
    Ok(())
}

fn text(path: &Path) -> Result<&str> {
    path.to_str().context("a UTF-8 path")
}
