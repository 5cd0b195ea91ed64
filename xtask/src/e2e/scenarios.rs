//! The guide's scenarios, as a user runs them.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::Value;

use super::tools::{diff, rows_per_table};
use super::{Ctx, http_get, poll};

/// The MinIO example verbatim (variables from the guide, this server's address and keys), the
/// scheduler for two cycles, then list, verify, restore and prune.
pub fn guide(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir("guide")?;
    let env = ctx
        .s3_env()
        .set("HITKEEP_BACKUP_PATH", ctx.s3.url("backups"))
        .set("HITKEEP_ARCHIVE_PATH", ctx.s3.url("archive"));
    ctx.demo(&dir, &env, 200_000, 3)?;
    let before = ctx.fingerprint(&dir)?;
    // After the split the default tenant has a database of its own, beside the other three.
    let tenant_dbs = if ctx.split() { 4 } else { 3 };
    ctx.report.check(
        format!("demo: shared db and {tenant_dbs} tenant dbs"),
        before.len() == 1 + tenant_dbs,
        format!("{:?}", before.keys()),
    );

    let doctor = ctx.hk(&dir, &env, &["doctor"])?;
    ctx.report.check(
        "hitkeep doctor passes against the server (round trip, multipart, paging, delete, clock)",
        doctor.ok(),
        format!("{}\n{}", doctor.brief(), doctor.stdout),
    );
    let ids = scheduler_two_cycles(ctx, &dir, &env)?;
    let after = ctx.fingerprint(&dir)?;
    ctx.report.check(
        "the scheduler's archive run (after 60 s) removed expired rows between the two cycles",
        rows_per_table(&after).values().sum::<u64>()
            < rows_per_table(&before).values().sum::<u64>(),
        "no rows left the databases",
    );
    let [first, second] = ids.as_slice() else {
        anyhow::bail!("expected two committed cycles, saw {ids:?}");
    };

    let listed = ctx.hk(&dir, &env, &["backup", "list"])?;
    ctx.report.check(
        "backup list shows both cycles",
        listed.ok()
            && listed.stdout.contains(first.as_str())
            && listed.stdout.contains(second.as_str()),
        listed.brief(),
    );
    readable_by_rclone(ctx, &[first, second], &before)?;
    let deep = ctx.hk(&dir, &env, &["backup", "verify", "--deep"])?;
    ctx.report
        .check("backup verify --deep (latest)", deep.ok(), deep.brief());
    let deep = ctx.hk(
        &dir,
        &env,
        &["backup", "verify", "--deep", "--snapshot", first],
    )?;
    ctx.report.check(
        "backup verify --deep --snapshot <first>",
        deep.ok(),
        deep.brief(),
    );

    restores(ctx, &dir, first, &before, &after)?;
    legacy_restore(ctx, &dir, &env, &after)?;
    prune(ctx, &dir, &env, second, &before)
}

/// The latest cycle as HitKeep Go writes it (no manifests, no markers), under a prefix of its own:
/// restored without -snapshot, every database comes back, the default tenant's included.
fn legacy_restore(
    ctx: &mut Ctx,
    dir: &Path,
    env: &super::Env,
    after: &super::Fingerprint,
) -> Result<()> {
    let local = ctx.dir("legacy-copy")?;
    if ctx.incremental() {
        // Incremental snapshots keep their table files in the pool: `export-plain` writes the
        // plain folders HitKeep Go reads.
        plain_for_hitkeep(ctx, dir, env, &local, after)?;
    } else {
        ctx.rclone
            .copy(&local, &ctx.s3.key("backups"), false, &[])?;
    }
    for name in ["manifest.json", "in-progress.json"] {
        remove_named(&local, name)?;
    }
    // Only the latest cycle: HitKeep Go's restore picks the newest folder; so do we for legacy ones.
    ctx.rclone
        .copy(&local, &ctx.s3.key("legacy-backups"), true, &[])?;
    let target = ctx.dir("restore-legacy")?;
    let out = ctx.restore(&target, &ctx.s3_env(), &ctx.s3.url("legacy-backups"), None)?;
    let got = ctx.fingerprint(&target)?;
    ctx.report.check(
        format!(
            "a HitKeep-Go-style snapshot (no manifests) of layout {} restores without -snapshot: every database, every row equal",
            ctx.layout
        ),
        out.ok() && out.stdout.contains("legacy") && got == *after,
        format!("{}\n{}", out.brief(), diff(&got, after)),
    );
    Ok(())
}

/// `backup export-plain` of the latest cycle into `local`; each folder a bare `IMPORT DATABASE`
/// in DuckDB 1.5 reads back to the rows of its database (`after`, the state the cycle saw).
pub(super) fn plain_for_hitkeep(
    ctx: &mut Ctx,
    dir: &Path,
    env: &super::Env,
    local: &Path,
    after: &super::Fingerprint,
) -> Result<()> {
    std::fs::remove_dir(local)?;
    let out = ctx.hk(
        dir,
        env,
        &[
            "backup",
            "export-plain",
            "-snapshot",
            "latest",
            &local.to_string_lossy(),
        ],
    )?;
    ctx.report.check(
        format!(
            "backup export-plain of the latest {} cycle{}",
            ctx.mode,
            if ctx.keys.is_some() {
                " (encrypted)"
            } else {
                ""
            }
        ),
        out.ok(),
        out.brief(),
    );
    let mut wrong = Vec::new();
    for (db, tables) in after {
        let id = std::fs::read_dir(local.join(db))?
            .next()
            .context("an exported database without a snapshot folder")??;
        let imported = ctx
            .dir(&format!("plain-{}", db.replace('/', "-")))?
            .join("hitkeep.db");
        let got = ctx.py.import_fingerprint(&id.path(), &imported)?;
        if &got != tables {
            wrong.push(format!("{db}: {got:?}"));
        }
    }
    ctx.report.check(
        format!(
            "DuckDB 1.5's bare IMPORT DATABASE reads every exported folder back to its database's rows ({} databases)",
            after.len()
        ),
        wrong.is_empty() && !after.is_empty(),
        wrong.join("\n"),
    );
    Ok(())
}

/// Removes every file called `name` under `dir`.
fn remove_named(dir: &Path, name: &str) -> Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            remove_named(&path, name)?;
        } else if path.file_name().is_some_and(|n| n == name) {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// `./hitkeep` with no subcommand, interval 1 minute, until two cycles are committed; the HTTP
/// endpoints are scraped on the way; then SIGTERM.
fn scheduler_two_cycles(ctx: &mut Ctx, dir: &Path, env: &super::Env) -> Result<Vec<String>> {
    let http = TcpListener::bind("127.0.0.1:0")?.local_addr()?.to_string();
    let sched = env
        .clone()
        .set("HITKEEP_BACKUP_INTERVAL", "1")
        .set("HITKEEP_HTTP_ADDR", &http);
    let running = ctx.hk.spawn(dir, &sched, &[])?;
    let mut scraped = false;
    let ids = poll(Duration::from_secs(240), Duration::from_secs(3), || {
        let ids = ctx.complete(dir, env, "shared")?;
        if !ids.is_empty() && !scraped {
            scraped = true;
            scrape(ctx, &http)?;
        }
        Ok((ids.len() >= 2).then_some(ids))
    })?;
    ctx.hk.terminate(&running)?;
    let out = ctx.hk.wait(running, Duration::from_secs(120))?;
    ctx.report
        .check("scheduler exits 0 on SIGTERM", out.ok(), out.brief());
    let ids = ids.context("the scheduler did not commit two cycles within 4 minutes")?;
    ctx.report.check(
        "scheduler committed two cycles a minute apart",
        ids.len() == 2,
        format!("{ids:?}"),
    );
    Ok(ids)
}

/// /healthz, /metrics and /api/admin/system/backups while the scheduler runs against the server.
fn scrape(ctx: &mut Ctx, http: &str) -> Result<()> {
    let (code, body) = http_get(http, "/healthz")?;
    ctx.report.check(
        "GET /healthz: 200 after a committed cycle",
        code == 200,
        format!("{code} {body}"),
    );
    let (code, body) = http_get(http, "/metrics")?;
    ctx.report.check(
        "GET /metrics: last success time and snapshot counts",
        code == 200
            && body.contains("hitkeep_backup_last_success_timestamp_seconds")
            && body.contains("hitkeep_backup_snapshots"),
        format!(
            "{code} {}",
            body.lines().take(5).collect::<Vec<_>>().join(" | ")
        ),
    );
    let (code, body) = http_get(http, "/api/admin/system/backups")?;
    let json: Value = serde_json::from_str(&body).unwrap_or_default();
    ctx.report.check(
        "GET /api/admin/system/backups: enabled, last_backup set, no failure",
        code == 200
            && json["enabled"] == true
            && json["last_backup"].is_string()
            && json["recent_failures"] == 0,
        format!("{code} {body}"),
    );
    Ok(())
}

/// Every object of each snapshot, as rclone lists and hashes it, matches the manifest.
fn readable_by_rclone(ctx: &mut Ctx, ids: &[&String], fp: &super::Fingerprint) -> Result<()> {
    let databases: Vec<&String> = fp.keys().collect();
    let mut objects = 0;
    let mut problems = Vec::new();
    // Incremental snapshots name table files in the pool, shared between snapshots.
    let pool_prefix = ctx.s3.key("backups/pool");
    let pool = ctx.rclone.objects(&pool_prefix)?;
    for id in ids {
        for db in &databases {
            let prefix = ctx.s3.key(&format!("backups/{db}/{id}"));
            let listed = ctx.rclone.objects(&prefix)?;
            let manifest: Value =
                serde_json::from_slice(&ctx.rclone.cat(&format!("{prefix}/manifest.json"))?)
                    .with_context(|| format!("parse {prefix}/manifest.json"))?;
            let files = manifest["files"].as_array().cloned().unwrap_or_default();
            for f in &files {
                let (name, size) = (f["name"].as_str().unwrap_or(""), f["size"].as_u64());
                let stored = match pooled(f) {
                    Some(key) => pool.get(key).copied(),
                    None => listed.get(name).copied(),
                };
                if stored != size {
                    problems.push(format!(
                        "{prefix}/{name}: stored {stored:?}, manifest {size:?}"
                    ));
                }
            }
            let extra: Vec<_> = listed
                .keys()
                .filter(|k| *k != "manifest.json" && !files.iter().any(|f| f["name"] == **k))
                .collect();
            if !extra.is_empty() {
                problems.push(format!("{prefix}: objects not in the manifest: {extra:?}"));
            }
            objects += listed.len();
        }
    }
    ctx.report.check(
        format!(
            "rclone lists every object of both cycles with the manifest's sizes ({objects} objects)"
        ),
        problems.is_empty() && objects > 0,
        problems.join("\n"),
    );
    // One snapshot downloaded and hashed by rclone: the bytes are what the manifest says.
    let prefix = ctx.s3.key(&format!("backups/shared/{}", ids[0]));
    let manifest: Value =
        serde_json::from_slice(&ctx.rclone.cat(&format!("{prefix}/manifest.json"))?)?;
    let hashes = ctx.rclone.sha256(&prefix)?;
    let pool_hashes = match ctx.incremental() {
        true => ctx.rclone.sha256(&pool_prefix)?,
        false => Default::default(),
    };
    let mismatched: Vec<String> = manifest["files"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| {
            let hash = match pooled(f) {
                Some(key) => pool_hashes.get(key),
                None => hashes.get(f["name"].as_str().unwrap_or("")),
            };
            hash.map(String::as_str) != f["sha256"].as_str()
        })
        .map(|f| f["name"].to_string())
        .collect();
    ctx.report.check(
        "SHA-256 of every shared object downloaded by rclone equals the manifest's",
        mismatched.is_empty() && !hashes.is_empty(),
        format!("mismatched: {mismatched:?}"),
    );
    Ok(())
}

/// A manifest file's key under `pool/`, when it is a pool object (an incremental snapshot's).
pub fn pooled(file: &Value) -> Option<&str> {
    file["object"].as_str()?.strip_prefix("pool/")
}

/// The guide's restore command (with -snapshot), again without it, and in place over live data.
fn restores(
    ctx: &mut Ctx,
    dir: &Path,
    first: &str,
    before: &super::Fingerprint,
    after: &super::Fingerprint,
) -> Result<()> {
    // Restores read from -from; the destination settings are not needed for them.
    let restore_env = ctx.s3_env();
    let from = ctx.s3.url("backups");
    let r0 = ctx.dir("restore-first")?;
    let out = ctx.restore(&r0, &restore_env, &from, Some(first))?;
    let got = ctx.fingerprint(&r0)?;
    ctx.report.check(
        "the guide's restore command (-from -snapshot -s3-region -yes): every database, every row equal to the source at that cycle",
        out.ok() && got == *before,
        format!("{}\n{}", out.brief(), diff(&got, before)),
    );
    let r1 = ctx.dir("restore-latest")?;
    let out = ctx.restore(&r1, &restore_env, &from, None)?;
    let got = ctx.fingerprint(&r1)?;
    ctx.report.check(
        "restore without -snapshot finds the latest cycle on S3: every row equal to the source now",
        out.ok() && got == *after,
        format!("{}\n{}", out.brief(), diff(&got, after)),
    );
    // In place, as an operator would after stopping HitKeep: the replaced files must survive.
    let out = ctx.restore(dir, &restore_env, &from, Some(first))?;
    let got = ctx.fingerprint(dir)?;
    let aside = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.to_string_lossy().contains("hitkeep.db.pre-restore.")
                && !p.to_string_lossy().ends_with(".wal")
        });
    let kept = match &aside {
        Some(p) => ctx.py.fingerprint_file(p)?,
        None => BTreeMap::new(),
    };
    ctx.report.check(
        "restore in place over live data: restored rows equal the cycle, the replaced database kept aside intact",
        out.ok() && got == *before && after.get("shared") == Some(&kept),
        format!("{}\naside: {aside:?}\n{}", out.brief(), diff(&got, before)),
    );
    Ok(())
}

/// Retention on S3 with `backup prune -yes`, checked by rclone's listing.
fn prune(
    ctx: &mut Ctx,
    dir: &Path,
    env: &super::Env,
    keep: &str,
    fp: &super::Fingerprint,
) -> Result<()> {
    let env = env.clone().set("HITKEEP_BACKUP_RETENTION", "1");
    let out = ctx.hk(dir, &env, &["backup", "prune", "-yes"])?;
    ctx.report.check(
        "backup prune -yes with HITKEEP_BACKUP_RETENTION=1",
        out.ok(),
        out.brief(),
    );
    let mut wrong = Vec::new();
    for db in fp.keys() {
        let left = ctx.rclone.dirs(&ctx.s3.key(&format!("backups/{db}")))?;
        if left != [keep] {
            wrong.push(format!("{db}: {left:?}"));
        }
    }
    ctx.report.check(
        "rclone sees exactly the newest snapshot left for every database",
        wrong.is_empty(),
        wrong.join("\n"),
    );
    let out = ctx.hk(dir, &env, &["backup", "verify"])?;
    ctx.report
        .check("the kept snapshot still verifies", out.ok(), out.brief());
    Ok(())
}

/// `archive run`, `archive query` and `archive restore` on S3, with rows before = rows after +
/// archived, per table.
pub fn archives(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir("archives")?;
    let env = ctx.s3_env_at("archives");
    ctx.demo(&dir, &env, 100_000, 2)?;
    let before = ctx.fingerprint(&dir)?;
    let out = ctx.hk(&dir, &env, &["archive", "run"])?;
    ctx.report.check("archive run", out.ok(), out.brief());
    let after = ctx.fingerprint(&dir)?;
    let archived = archived_rows(ctx, &dir, &env)?;
    balance(ctx, "archive run", &before, &after, &archived);
    // Every analytics database held expired rows (two years of data, 365-day windows); after the split
    // the default tenant's are in its own database, and the shared one holds none.
    let rows = |fp: &super::Fingerprint, db: &str| -> u64 {
        fp.get(db).map_or(0, |t| t.values().map(|(n, _)| n).sum())
    };
    let untouched: Vec<&String> = before
        .keys()
        .filter(|db| db.starts_with("tenants/") && rows(&after, db) >= rows(&before, db))
        .collect();
    ctx.report.check(
        format!(
            "archive run took expired rows out of every tenant database{} (layout {})",
            if ctx.split() {
                ", the default tenant's own included"
            } else {
                ""
            },
            ctx.layout
        ),
        untouched.is_empty(),
        format!("no rows left: {untouched:?}"),
    );
    let archived_scf = archived.get("search_console_facts").copied().unwrap_or(0);
    ctx.report.check(
        format!(
            "search_console_facts is archived where the schema has it (layout {})",
            ctx.layout
        ),
        (archived_scf > 0) == ctx.split(),
        format!("{archived_scf} rows archived"),
    );
    let objects = ctx.rclone.objects(&ctx.s3.key("archives/archive"))?;
    ctx.report.check(
        "rclone lists the Parquet archives",
        objects.keys().any(|k| k.ends_with(".parquet")),
        format!("{objects:?}"),
    );
    let again = ctx.hk(&dir, &env, &["archive", "run"])?;
    let unchanged = ctx.fingerprint(&dir)? == after && archived_rows(ctx, &dir, &env)? == archived;
    ctx.report.check(
        "a second archive run changes nothing",
        again.ok() && unchanged,
        again.brief(),
    );

    let sites = ctx.hk(&dir, &env, &["archive", "list", "--json"])?;
    let sites: Vec<Value> = serde_json::from_str(&sites.stdout).context("archive list --json")?;
    let mut site_ids: Vec<String> = sites
        .iter()
        .filter_map(|s| s["site_id"].as_str().map(str::to_owned))
        .collect();
    site_ids.dedup();
    let mut failures = Vec::new();
    for site in &site_ids {
        let out = ctx.hk(&dir, &env, &["archive", "restore", "--site", site])?;
        if !out.ok() {
            failures.push(format!("{site}: {}", out.brief()));
        }
    }
    let restored = ctx.fingerprint(&dir)?;
    ctx.report.check(
        format!(
            "archive restore of all {} sites: every database equals its state before archiving (expired rollup_dirty_buckets markers are deleted, not archived)",
            site_ids.len()
        ),
        failures.is_empty() && without_markers(&restored) == without_markers(&before),
        format!(
            "{}\n{}",
            failures.join("\n"),
            diff(&without_markers(&restored), &without_markers(&before))
        ),
    );
    Ok(())
}

/// A fingerprint without `rollup_dirty_buckets`: HitKeep's retention deletes expired markers (they ask
/// for a rollup to be recomputed from rows that are gone) and nothing brings them back.
fn without_markers(fp: &super::Fingerprint) -> super::Fingerprint {
    fp.iter()
        .map(|(db, tables)| {
            let mut tables = tables.clone();
            tables.retain(|t, _| t.trim_start_matches("main.") != "rollup_dirty_buckets");
            (db.clone(), tables)
        })
        .collect()
}

/// Rows per table in the archive, through `archive query`.
pub fn archived_rows(ctx: &Ctx, dir: &Path, env: &super::Env) -> Result<BTreeMap<String, u64>> {
    let out = ctx.hk(
        dir,
        env,
        &[
            "archive",
            "query",
            "select _source, count(*) from archive group by all",
        ],
    )?;
    anyhow::ensure!(out.ok(), "archive query failed: {}", out.brief());
    Ok(out
        .stdout
        .lines()
        .skip(1)
        .filter_map(|l| {
            let (t, n) = l.split_once('\t')?;
            Some((t.to_owned(), n.trim().parse().ok()?))
        })
        .collect())
}

/// Rows before = rows after + archived, for every table.
pub fn balance(
    ctx: &mut Ctx,
    what: &str,
    before: &super::Fingerprint,
    after: &super::Fingerprint,
    archived: &BTreeMap<String, u64>,
) -> bool {
    let (b, a) = (rows_per_table(before), rows_per_table(after));
    // HitKeep deletes expired rollup_dirty_buckets markers without archiving them: not part of the sum.
    let wrong: Vec<String> = b
        .iter()
        .filter(|(t, _)| t.as_str() != "rollup_dirty_buckets")
        .filter(|(t, n)| {
            **n != a.get(*t).copied().unwrap_or(0) + archived.get(*t).copied().unwrap_or(0)
        })
        .map(|(t, n)| {
            format!(
                "{t}: before {n}, after {:?}, archived {:?}",
                a.get(t),
                archived.get(t)
            )
        })
        .collect();
    let total: u64 = archived.values().sum();
    ctx.report.check(
        format!("{what}: rows before = rows after + archived, per table ({total} rows archived)"),
        wrong.is_empty() && total > 0,
        wrong.join("\n"),
    )
}
