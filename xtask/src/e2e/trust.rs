//! What the process cannot trust, seen from outside: two installations writing to one destination at
//! the same second, a clock a year ahead and then a clock behind, and kills followed by cycles on a
//! small disk. Small data throughout: these check decisions, not throughput.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;

use super::hitkeep::{Env, Out};
use super::tools::{self, diff};
use super::{Ctx, entries};

/// Two data paths back up to one S3 prefix, started in the same second, twice. Every complete cycle
/// verifies against its manifest; restore of latest refuses and names both sources; `-source` picks one.
pub fn two_writers(ctx: &mut Ctx) -> Result<()> {
    let name = "two-writers";
    let env = ctx.s3_env_at(name);
    let (a, b) = (ctx.dir("two-writers/a")?, ctx.dir("two-writers/b")?);
    ctx.demo(&a, &env, 3_000, 1)?;
    ctx.demo(&b, &env, 5_000, 1)?;
    let (fa, fb) = (ctx.fingerprint(&a)?, ctx.fingerprint(&b)?);
    ensure!(fa != fb, "the two demo data sets should differ");
    let mut failures = Vec::new();
    for _ in 0..2 {
        wait_for_second_boundary();
        let ra = ctx.hk.spawn(&a, &env, &["backup", "run"])?;
        let rb = ctx.hk.spawn(&b, &env, &["backup", "run"])?;
        for out in [
            ctx.hk.wait(ra, Duration::from_secs(300))?,
            ctx.hk.wait(rb, Duration::from_secs(300))?,
        ] {
            if !out.ok() {
                failures.push(out.brief());
            }
        }
    }
    ctx.report.check(
        "two writers started in the same second: both cycles commit, each under its own id",
        failures.is_empty(),
        failures.join("\n"),
    );

    let listed = ctx.snapshots(&a, &env)?;
    let shared: Vec<&Value> = listed
        .iter()
        .filter(|s| s["database"] == "shared" && s["state"]["state"] == "complete")
        .collect();
    let mut bad = Vec::new();
    for s in &shared {
        let id = s["snapshot_id"].as_str().unwrap_or_default();
        let out = ctx.hk(&a, &env, &["backup", "verify", "-snapshot", id])?;
        if !out.ok() {
            bad.push(format!("{id}: {}", out.brief()));
        }
    }
    ctx.report.check(
        format!(
            "every complete cycle ({}) verifies against its manifest",
            shared.len()
        ),
        bad.is_empty() && shared.len() == 4,
        format!("{} complete; {}", shared.len(), bad.join("\n")),
    );
    let (sa, sb) = (source_of(&a)?, source_of(&b)?);
    let sources: std::collections::BTreeSet<&str> =
        shared.iter().filter_map(|s| s["source"].as_str()).collect();
    ctx.report.check(
        "backup list shows each cycle's source, both installations' ids",
        sources.contains(sa.as_str()) && sources.contains(sb.as_str()),
        format!("{sources:?}"),
    );

    let from = ctx.s3.url(&format!("{name}/backups"));
    let target = fresh(ctx, "two-writers/restore")?;
    let out = restore(ctx, &target, &from, &[])?;
    let text = out.message();
    ctx.report.check(
        "restore of latest refuses when two sources write here, listing both",
        !out.ok() && text.contains(&sa) && text.contains(&sb) && text.contains("-source"),
        out.brief(),
    );
    let nothing = entries(&target)?
        .into_iter()
        .filter(|p| p.is_file())
        .count()
        == 0;
    ctx.report.check(
        "the refused restore wrote nothing",
        nothing,
        format!("{:?}", entries(&target)?),
    );
    for (source, dir, expected) in [(&sa, &a, &fa), (&sb, &b, &fb)] {
        let target = fresh(ctx, "two-writers/restore")?;
        let out = restore(ctx, &target, &from, &["-source", source])?;
        let got = if out.ok() {
            Some(ctx.fingerprint(&target)?)
        } else {
            None
        };
        ctx.report.check(
            format!(
                "restore -source {} brings back {}'s data",
                &source[..8],
                dir.display()
            ),
            got.as_ref() == Some(expected),
            got.map_or_else(|| out.brief(), |g| diff(&g, expected)),
        );
    }
    Ok(())
}

/// A clock two hours behind the newest cycle is refused, naming both times. A cycle under a clock a
/// year ahead, then normal cycles: they run, "latest" is the newest data and retention removes the
/// future-dated cycle in its turn; `backup list` marks a snapshot dated in the future.
pub fn wrong_clock(ctx: &mut Ctx) -> Result<()> {
    let faketime = faketime()?;
    let dir = ctx.dir("clock")?;
    let dest = dir.join("backups");
    let env = Env::default()
        .set("HITKEEP_BACKUP_PATH", dest.display().to_string())
        .set("HITKEEP_BACKUP_RETENTION", "2")
        .set("FAKETIME_DONT_FAKE_MONOTONIC", "1");
    ctx.demo(&dir, &env, 2_000, 1)?;
    let out = ctx.hk(&dir, &env, &["backup", "run"])?;
    ensure!(out.ok(), "the first backup failed: {}", out.brief());
    let first = ctx
        .complete(&dir, &env, "shared")?
        .pop()
        .context("no first cycle")?;

    let behind = [faketime.as_str(), "-f", "-2h"];
    let out = ctx
        .hk
        .run_wrapped(&behind, &dir, &env, &["backup", "run"])?;
    let text = out.message();
    ctx.report.check(
        "a clock two hours behind the newest cycle is refused, naming both times",
        out.code == Some(1) && text.contains(&first) && text.contains("clock"),
        out.brief(),
    );
    ensure!(
        ctx.complete(&dir, &env, "shared")?.len() == 1,
        "the refused cycle committed something"
    );

    let ahead = [faketime.as_str(), "-f", "+365d"];
    let out = ctx.hk.run_wrapped(&ahead, &dir, &env, &["backup", "run"])?;
    ensure!(out.ok(), "the backup a year ahead failed: {}", out.brief());
    let future = ctx
        .complete(&dir, &env, "shared")?
        .pop()
        .context("no future cycle")?;
    let out = ctx.hk(&dir, &env, &["backup", "run"])?;
    ctx.report.check(
        "after the clock is corrected, the next cycle runs and warns about the future-dated one",
        out.ok() && out.stderr.contains("ahead of this machine's clock"),
        out.brief(),
    );
    ctx.py.mark(&dir.join("hitkeep.db"), 1)?;
    let state = ctx.fingerprint(&dir)?;
    let out = ctx.hk(&dir, &env, &["backup", "run"])?;
    ensure!(
        out.ok(),
        "the backup after the correction failed: {}",
        out.brief()
    );

    let listed = ctx.snapshots(&dir, &env)?;
    let kept: Vec<&str> = listed
        .iter()
        .filter(|s| s["database"] == "shared")
        .filter_map(|s| s["snapshot_id"].as_str())
        .collect();
    let latest: Vec<&str> = listed
        .iter()
        .filter(|s| s["latest"] == true)
        .filter_map(|s| s["snapshot_id"].as_str())
        .collect();
    ctx.report.check(
        "retention (2) removed the future-dated cycle in its turn; latest is the newest cycle",
        !kept.contains(&future.as_str())
            && kept.len() == 2
            && latest.len() == 1
            && latest[0] != future,
        format!("future {future}; kept {kept:?}; latest {latest:?}"),
    );
    let target = fresh(ctx, "clock/restore")?;
    let out = restore(ctx, &target, &dest.display().to_string(), &[])?;
    let got = if out.ok() {
        Some(ctx.fingerprint(&target)?)
    } else {
        None
    };
    ctx.report.check(
        "restore of latest brings back the newest data, not the future-dated cycle's",
        got.as_ref() == Some(&state),
        got.map_or_else(|| out.brief(), |g| diff(&g, &state)),
    );

    let out = ctx.hk.run_wrapped(&ahead, &dir, &env, &["backup", "run"])?;
    ensure!(
        out.ok(),
        "the second backup a year ahead failed: {}",
        out.brief()
    );
    let out = ctx.hk(&dir, &env, &["backup", "list"])?;
    ctx.report.check(
        "backup list marks a snapshot dated in the future",
        out.ok() && out.stdout.contains("in the future"),
        out.brief(),
    );
    Ok(())
}

/// Kills during cycles to a small tmpfs, then normal cycles: the space the killed runs took comes
/// back (no unfinished snapshot, no partial upload), and the location holds exactly what is listed.
pub fn kills_on_a_small_disk(ctx: &mut Ctx) -> Result<()> {
    let dir = ctx.dir("small-disk")?;
    let mount = dir.join("tmpfs");
    std::fs::create_dir_all(&mount)?;
    tools::run(
        Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=192m", "tmpfs"])
            .arg(&mount),
    )
    .context("mount a tmpfs (the e2e runs as root)")?;
    let result = kills_on(ctx, &dir, &mount.join("backups"));
    let _ = Command::new("umount").arg(&mount).status();
    result
}

fn kills_on(ctx: &mut Ctx, dir: &Path, dest: &Path) -> Result<()> {
    let env = Env::default()
        .set("HITKEEP_BACKUP_PATH", dest.display().to_string())
        .set("HITKEEP_BACKUP_RETENTION", "2");
    ctx.demo(dir, &env, 60_000, 2)?;
    let t = Instant::now();
    let out = ctx.hk(dir, &env, &["backup", "run"])?;
    ensure!(out.ok(), "the first backup failed: {}", out.brief());
    let full = t.elapsed();
    let mut killed = 0;
    for _ in 0..4 {
        let running = ctx.hk.spawn(dir, &env, &["backup", "run"])?;
        std::thread::sleep(full.mul_f64(0.2 + fastrand::f64() * 0.6));
        if ctx.hk.kill(running)?.code.is_none() {
            killed += 1;
        }
    }
    let left_by_kills = bytes_under(dest)?;
    for _ in 0..2 {
        let out = ctx.hk(dir, &env, &["backup", "run"])?;
        ensure!(out.ok(), "a backup after the kills failed: {}", out.brief());
    }
    let listed = ctx.snapshots(dir, &env)?;
    let unfinished: Vec<String> = listed
        .iter()
        .filter(|s| s["state"]["state"] != "complete")
        .map(|s| format!("{}/{}", s["database"], s["snapshot_id"]))
        .collect();
    let listed_bytes: u64 = listed.iter().filter_map(|s| s["size"].as_u64()).sum();
    let stored = bytes_under(dest)?;
    let partial = bytes_under(&dest.join(".hitkeep-tmp"))?;
    ctx.report.figure(
        "small disk",
        format!("{killed} of 4 runs killed mid-way; {left_by_kills} bytes stored before the cleanup, {stored} after"),
    );
    ctx.report.check(
        "after kills, the next cycles leave no unfinished snapshot and no partial upload",
        unfinished.is_empty() && partial == 0,
        format!("unfinished {unfinished:?}; {partial} bytes under .hitkeep-tmp"),
    );
    // Only the listed snapshots and the small source records remain.
    ctx.report.check(
        "the space comes back: the location holds the listed snapshots and nothing else of size",
        stored <= listed_bytes + 64 * 1024,
        format!("{stored} bytes stored, {listed_bytes} listed"),
    );
    Ok(())
}

fn bytes_under(dir: &Path) -> Result<u64> {
    if !dir.exists() {
        return Ok(0);
    }
    let mut total = 0;
    for p in entries(dir)? {
        if p.is_file() {
            total += std::fs::metadata(&p)?.len();
        }
    }
    Ok(total)
}

fn restore(ctx: &Ctx, target: &Path, from: &str, extra: &[&str]) -> Result<Out> {
    let mut args = vec!["recover", "restore-backup", "-from", from];
    args.extend_from_slice(extra);
    args.extend(["-s3-region", &ctx.s3.region, "-yes"]);
    ctx.hk(target, &ctx.s3_env(), &args)
}

fn fresh(ctx: &Ctx, name: &str) -> Result<PathBuf> {
    let dir = ctx.work.join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}

/// The installation's source id, as `hitkeep` stored it beside the data.
fn source_of(dir: &Path) -> Result<String> {
    let file = dir.join("data/.hitkeep-source");
    Ok(std::fs::read_to_string(&file)
        .with_context(|| format!("read {}", file.display()))?
        .trim()
        .to_owned())
}

/// libfaketime's wrapper, installed from Debian when missing (never skipped).
pub(super) fn faketime() -> Result<String> {
    if tools::on_path("faketime").is_none() {
        tools::apt_install("faketime")?;
    }
    tools::on_path("faketime")
        .map(|p| p.display().to_string())
        .context("faketime is not on PATH after installing it")
}

/// Sleeps to 100 ms past the next whole second, so two processes started now share their first second.
fn wait_for_second_boundary() {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    std::thread::sleep(
        Duration::from_nanos(u64::from(1_000_000_000 - nanos)) + Duration::from_millis(100),
    );
}
