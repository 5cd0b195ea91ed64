//! S3 Object Lock against moto (the run's Garage has none), under a wrong clock: the lock's date is
//! the server's clock plus the days whatever this host's clock says, and prune keeps a snapshot the
//! bucket still locks even when this host's clock says the lock has ended.

use anyhow::{Context, Result, ensure};

use super::Ctx;
use super::hitkeep::Env;
use super::tools::Moto;
use super::trust::faketime;

const BUCKET: &str = "locked";
const DAYS: i64 = 3;

pub fn wrong_clock(ctx: &mut Ctx) -> Result<()> {
    let faketime = faketime()?;
    let moto = Moto::start(&ctx.cache, &ctx.work)?;
    moto.create_bucket(BUCKET, true)?;
    let secret = "e2e-moto-secret-key-5f1c7a";
    ctx.secrets.push(secret.to_owned());
    let dir = ctx.dir("object-lock")?;
    let env = Env::default()
        .set("HITKEEP_S3_ENDPOINT", &moto.addr)
        .set("HITKEEP_S3_URL_STYLE", "path")
        .set("HITKEEP_S3_USE_SSL", "false")
        .set("HITKEEP_S3_REGION", "us-east-1")
        .set("HITKEEP_S3_ACCESS_KEY_ID", "e2emoto")
        .set("HITKEEP_S3_SECRET_ACCESS_KEY", secret)
        .set("HITKEEP_BACKUP_PATH", format!("s3://{BUCKET}/backups"))
        .set("HITKEEP_ARCHIVE_PATH", format!("s3://{BUCKET}/archive"))
        .set("HITKEEP_BACKUP_OBJECT_LOCK_DAYS", DAYS.to_string())
        .set("HITKEEP_BACKUP_RETENTION", "1")
        .set("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    ctx.demo(&dir, &env, 2_000, 1)?;

    // A host clock 400 days behind: the lock is still counted from the server's clock.
    let behind = [faketime.as_str(), "-f", "-400d"];
    let out = ctx
        .hk
        .run_wrapped(&behind, &dir, &env, &["backup", "run"])?;
    ensure!(
        out.ok(),
        "the backup under a clock 400 days behind failed: {}",
        out.brief()
    );
    let expected = jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * DAYS);
    let locks = moto.locks(BUCKET, "backups/")?;
    let snapshot_objects: Vec<_> = locks
        .iter()
        .filter(|(k, _)| k.starts_with("backups/shared/") || k.starts_with("backups/tenants/"))
        .collect();
    let off_by = |until: &str| {
        until
            .parse::<jiff::Timestamp>()
            .map(|t| t.duration_since(expected).abs())
            .unwrap_or(jiff::SignedDuration::MAX)
    };
    let wrong: Vec<_> = snapshot_objects
        .iter()
        .filter(|(_, (mode, until))| {
            mode != "GOVERNANCE" || off_by(until) > jiff::SignedDuration::from_hours(1)
        })
        .collect();
    ctx.report.check(
        format!(
            "under a clock 400 days behind, every object of the cycle is locked {DAYS} days from the server's clock"
        ),
        !snapshot_objects.is_empty() && wrong.is_empty(),
        format!("{} objects; not so: {wrong:?}", snapshot_objects.len()),
    );

    // A second cycle with the right clock; then a prune by a host clock 10 days ahead, which would
    // take the first cycle's lock for ended.
    let out = ctx.hk(&dir, &env, &["backup", "run"])?;
    ensure!(out.ok(), "the second backup failed: {}", out.brief());
    let ahead = [faketime.as_str(), "-f", "+10d"];
    let out = ctx
        .hk
        .run_wrapped(&ahead, &dir, &env, &["backup", "prune", "-yes"])?;
    let shared = ctx.complete(&dir, &env, "shared")?;
    ctx.report.check(
        "a prune under a clock 10 days ahead keeps the locked cycle past retention and says so",
        out.ok()
            && out.stdout.contains("kept by S3 Object Lock")
            && !out.stdout.contains("deleted")
            && shared.len() == 2,
        format!("{} cycles listed; {}", shared.len(), out.brief()),
    );
    let listed = ctx.snapshots(&dir, &env)?;
    let first = shared.first().context("no first cycle")?;
    let recorded = listed
        .iter()
        .find(|s| s["database"] == "shared" && s["snapshot_id"] == first.as_str())
        .and_then(|s| s["object_lock"]["retain_until"].as_str())
        .unwrap_or_default()
        .to_owned();
    ctx.report.check(
        "backup list shows the lock the cycle set, by the server's clock",
        off_by(&recorded) <= jiff::SignedDuration::from_hours(1),
        recorded,
    );
    Ok(())
}
