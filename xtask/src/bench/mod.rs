//! `cargo xtask bench`: backup, restore and archive measured beside bare baselines in the same run, on
//! the same machine and S3 server, so that ratios mean something on a shared machine.
//!
//! - Backup to S3 against the same `EXPORT DATABASE` to local disk alone, and against rclone uploading
//!   those exported files at its defaults and tuned.
//! - Restore of latest against rclone downloading the same files plus a bare `IMPORT DATABASE`.
//! - Archiving a site with 90% of its rows expired against a bare `COPY … TO parquet` plus `DELETE`.
//! - Tenants: one backup cycle of 10, 50 and 200 small tenant databases, one at a time and concurrently.
//! - Finding latest with 1,000 snapshots present: ListObjectsV2 requests counted by a relaying proxy.
//! - Online: ingest into a server that embeds the engine, with no backups and with cycles back to
//!   back to local disk and to S3 (`online.rs`; `HITKEEP_BENCH_PANELS=online` runs it alone and
//!   merges its section into the existing latest.md).
//!
//! - Incremental: full backups against incremental cycles after 1% new hits, what they store, and
//!   restores of both (`incremental.rs`; `HITKEEP_BENCH_PANELS=incremental` runs it alone and writes
//!   `bench/results/incremental.md`).
//!
//! - Encrypted: full backups and restores with and without age recipients, at
//!   `HITKEEP_BENCH_ENCRYPTED_SIZES` (4000000,16000000) (`encrypted.rs`; `HITKEEP_BENCH_PANELS=encrypted`
//!   runs it alone and writes `bench/results/encrypted.md`).
//!
//! - Restore on HitKeep 2.13's schema (no keys on the big tables) against rclone's download plus a
//!   bare `IMPORT`, at `HITKEEP_BENCH_SPLIT_SIZES` (4000000,16000000) (`split.rs`;
//!   `HITKEEP_BENCH_PANELS=restore-2.13` runs it alone and writes `bench/results/restore-2.13.md`).
//!
//! `HITKEEP_BENCH_PANELS=sizes` runs backup, restore and archive at each size only and writes
//! `bench/results/sizes.md`, leaving latest.md, the chart and the README to full runs.
//!
//! Every operation is run `HITKEEP_BENCH_RUNS` times (3) and its median kept. The size, encrypted and
//! 2.13 restore panels generate new demo data for every run, and the incremental panel for every full backup, so
//! that none of hitkeep's timed full backups to S3 repeats bytes already stored (Garage keeps blocks
//! by their hash and would hardly write a repeated snapshot again). The rclone lines upload one export
//! twice per run, so the tuned upload meets stored blocks: they are reference lines, not a target's
//! baseline. Results go to `bench/results/latest.md` and `latest.png`. Sizes: `HITKEEP_BENCH_SIZES` (1000000,4000000,16000000),
//! tenant counts: `HITKEEP_BENCH_TENANTS` (10,50,200), DuckDB's memory limit for hitkeep:
//! `HITKEEP_BENCH_MEMORY_LIMIT_MIB` (1024).

mod chart;
mod encrypted;
mod incremental;
mod measure;
mod online;
mod results;
mod split;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::e2e::proxy::FaultProxy;
use crate::e2e::server::{Kind, S3Server};
use crate::e2e::tools::{self, Rclone};
use measure::{Meter, Sample, du, median};
use results::{Results, SizeResult, TenantResult};

/// rclone's tuned upload, as measured-facts.md found best on this machine.
const RCLONE_TUNED: &[&str] = &[
    "--transfers",
    "8",
    "--s3-upload-concurrency",
    "8",
    "--s3-chunk-size",
    "16M",
];
/// Days of retention that leave 10% of the demo's two years: 90% of a site's rows expire.
const ARCHIVE_DAYS: &str = "73";

struct Bench {
    s3: S3Server,
    rclone: Rclone,
    meter: Meter,
    hitkeep: PathBuf,
    baseline: PathBuf,
    work: PathBuf,
    runs: usize,
    memory_limit_mib: u64,
}

fn list_env(name: &str, default: &str) -> Result<Vec<u64>> {
    let text = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    text.split(',')
        .map(|s| s.trim().replace('_', "").parse::<u64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("{name} must be numbers separated by commas, e.g. {default}"))
}

pub fn run() -> Result<()> {
    let started = Instant::now();
    let root = crate::workspace_root()?;
    let root = root.as_path();
    let cache = std::env::var_os("HITKEEP_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/hitkeep"),
        PathBuf::from,
    );
    let sizes = list_env("HITKEEP_BENCH_SIZES", "1000000,4000000,16000000")?;
    let tenant_counts = list_env("HITKEEP_BENCH_TENANTS", "10,50,200")?;
    let runs = list_env("HITKEEP_BENCH_RUNS", "3")?
        .first()
        .copied()
        .unwrap_or(3)
        .max(1) as usize;
    let work_dir = tempfile::Builder::new()
        .prefix("hitkeep-bench-")
        .tempdir_in(cache.as_path())?;
    let work = work_dir.path().to_owned();
    let s3 = S3Server::start(&cache, &work, "bench")?;
    let rclone = Rclone::new(&s3)?;
    if s3.kind == Kind::Minio {
        rclone.mkdir(&s3.bucket)?;
    }
    let bench = Bench {
        meter: Meter::new(&work, s3.pid())?,
        hitkeep: tools::built(root, "hitkeep")?,
        baseline: tools::built(root, "hk-baseline")?,
        s3,
        rclone,
        work,
        runs,
        memory_limit_mib: list_env("HITKEEP_BENCH_MEMORY_LIMIT_MIB", "1024")?[0],
    };
    println!("bench: S3 server: {}", bench.s3.describe());
    let panels = std::env::var("HITKEEP_BENCH_PANELS").unwrap_or_else(|_| "all".into());
    let all = match panels.trim() {
        "all" => true,
        "sizes" => false,
        "online" => return online_only(&bench, root),
        "incremental" => return incremental_only(&bench, root, &cache),
        "encrypted" => return encrypted_only(&bench, root, &cache),
        "restore-2.13" => return split_only(&bench, root),
        other => anyhow::bail!(
            "HITKEEP_BENCH_PANELS is `all` (the default), `sizes`, `online`, `incremental`, `encrypted` or `restore-2.13`, not {other:?}"
        ),
    };
    if all {
        // Refused now, not after the other panels' forty minutes.
        tools::built(root, "examples/embedded_server")?;
        encrypted_sizes()?;
        split_sizes()?;
    }
    println!("bench: {runs} runs each, sizes {sizes:?}, tenants {tenant_counts:?}");

    let mut results = Results::new(&bench.s3.describe(), runs, bench.memory_limit_mib);
    for &hits in &sizes {
        results.sizes.push(bench.size(hits)?);
    }
    let out = root.join("bench/results");
    std::fs::create_dir_all(&out)?;
    if !all {
        return sizes_only(&bench, results, started, &out);
    }
    for &tenants in &tenant_counts {
        results.tenants.push(bench.tenants(tenants)?);
    }
    results.listing = Some(bench.listing()?);
    let (hits, cycles) = incremental_settings()?;
    let incremental = bench.incremental(hits, cycles, &cache)?;
    let sealed = bench.encrypted(&encrypted_sizes()?, &cache)?;
    let split = bench.split(&split_sizes()?)?;
    // A failed online panel still leaves the other panels' figures written.
    let online_failed = match bench.online(root) {
        Ok(online) => {
            results.online = Some(online);
            None
        }
        Err(e) => Some(e),
    };
    results.total = started.elapsed();

    // The profile behind the numbers, written by hand after a run, goes with them.
    let mut md = results.markdown();
    md.push('\n');
    md.push_str(&incremental.section());
    md.push('\n');
    md.push_str(&encrypted::section(&sealed, bench.memory_limit_mib));
    md.push('\n');
    md.push_str(&split::section(&split, bench.memory_limit_mib));
    if let Ok(analysis) = std::fs::read_to_string(root.join("bench/analysis.md")) {
        md.push('\n');
        md.push_str(&analysis);
    }
    std::fs::write(out.join("latest.md"), &md)?;
    chart::draw(&results, &out.join("latest.png"))?;
    update_readme(&root.join("README.md"), &results.markdown())?;
    println!("{md}");
    println!(
        "bench: wrote {} and latest.png",
        out.join("latest.md").display()
    );
    if bench.s3.kind == Kind::Endpoint {
        bench.rclone.purge(&bench.s3.key(""))?;
    }
    online_failed.map_or(Ok(()), Err)
}

/// `HITKEEP_BENCH_PANELS=sizes`: backup, restore and archive at each size, written to `sizes.md`
/// (latest.md, the chart and the README keep the last full run).
fn sizes_only(bench: &Bench, mut results: Results, started: Instant, out: &Path) -> Result<()> {
    results.total = started.elapsed();
    let md = results.markdown();
    std::fs::write(out.join("sizes.md"), &md)?;
    println!("{md}");
    println!("bench: wrote {}", out.join("sizes.md").display());
    if bench.s3.kind == Kind::Endpoint {
        bench.rclone.purge(&bench.s3.key(""))?;
    }
    Ok(())
}

/// The incremental panel's size (`HITKEEP_BENCH_INCREMENTAL_HITS`, 16M) and cycles
/// (`HITKEEP_BENCH_CYCLES`, 24).
fn incremental_settings() -> Result<(u64, usize)> {
    let hits = list_env("HITKEEP_BENCH_INCREMENTAL_HITS", "16000000")?[0];
    let cycles = list_env("HITKEEP_BENCH_CYCLES", "24")?[0];
    Ok((hits, usize::try_from(cycles)?))
}

/// `HITKEEP_BENCH_PANELS=incremental`: the incremental panel alone, written to `incremental.md`.
fn incremental_only(bench: &Bench, root: &Path, cache: &Path) -> Result<()> {
    let (hits, cycles) = incremental_settings()?;
    let section = bench.incremental(hits, cycles, cache)?.section();
    write_panel(bench, root, "incremental.md", &section)
}

/// A panel run alone: its section written to `bench/results/{name}` and printed.
fn write_panel(bench: &Bench, root: &Path, name: &str, section: &str) -> Result<()> {
    let out = root.join("bench/results");
    std::fs::create_dir_all(&out)?;
    std::fs::write(out.join(name), section)?;
    println!("{section}");
    println!("bench: wrote {}", out.join(name).display());
    if bench.s3.kind == Kind::Endpoint {
        bench.rclone.purge(&bench.s3.key(""))?;
    }
    Ok(())
}

/// The encrypted panel's sizes (`HITKEEP_BENCH_ENCRYPTED_SIZES`, 4M and 16M hits).
fn encrypted_sizes() -> Result<Vec<u64>> {
    list_env("HITKEEP_BENCH_ENCRYPTED_SIZES", "4000000,16000000")
}

/// `HITKEEP_BENCH_PANELS=encrypted`: the encrypted panel alone, written to `encrypted.md`.
fn encrypted_only(bench: &Bench, root: &Path, cache: &Path) -> Result<()> {
    let results = bench.encrypted(&encrypted_sizes()?, cache)?;
    let section = encrypted::section(&results, bench.memory_limit_mib);
    write_panel(bench, root, "encrypted.md", &section)
}

/// The 2.13 restore panel's sizes (`HITKEEP_BENCH_SPLIT_SIZES`, 4M and 16M hits).
fn split_sizes() -> Result<Vec<u64>> {
    list_env("HITKEEP_BENCH_SPLIT_SIZES", "4000000,16000000")
}

/// `HITKEEP_BENCH_PANELS=restore-2.13`: the 2.13 restore panel alone, written to `restore-2.13.md`.
fn split_only(bench: &Bench, root: &Path) -> Result<()> {
    let section = split::section(&bench.split(&split_sizes()?)?, bench.memory_limit_mib);
    write_panel(bench, root, "restore-2.13.md", &section)
}

/// `HITKEEP_BENCH_PANELS=online`: the online panel alone, its section merged into the existing
/// latest.md so the other panels' numbers stay (the chart and the README follow full runs only).
fn online_only(bench: &Bench, root: &Path) -> Result<()> {
    let section = bench.online(root)?.section();
    let out = root.join("bench/results");
    std::fs::create_dir_all(&out)?;
    let latest = online::merge(&out.join("latest.md"), &section)?;
    println!("{section}");
    println!("bench: merged the online panel into {}", latest.display());
    if bench.s3.kind == Kind::Endpoint {
        bench.rclone.purge(&bench.s3.key(""))?;
    }
    Ok(())
}

impl Bench {
    /// The settings every hitkeep run gets: the data under `dir`, S3 and DuckDB's memory limit.
    fn env(&self, dir: &Path, extra: &[(&str, String)]) -> Vec<(String, String)> {
        let mut env = vec![
            (
                "HITKEEP_DB_PATH",
                dir.join("hitkeep.db").display().to_string(),
            ),
            ("HITKEEP_DATA_PATH", dir.join("data").display().to_string()),
            ("HITKEEP_S3_ENDPOINT", self.s3.endpoint.clone()),
            ("HITKEEP_S3_ACCESS_KEY_ID", self.s3.access_key.clone()),
            ("HITKEEP_S3_SECRET_ACCESS_KEY", self.s3.secret_key.clone()),
            ("HITKEEP_S3_REGION", self.s3.region.clone()),
            ("HITKEEP_S3_URL_STYLE", "path".into()),
            ("HITKEEP_S3_USE_SSL", self.s3.use_ssl.to_string()),
            (
                "HITKEEP_DUCKDB_MEMORY_LIMIT",
                format!("{}MiB", self.memory_limit_mib),
            ),
            ("HITKEEP_LOG_LEVEL", "warn".into()),
        ];
        env.extend(extra.iter().cloned());
        env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }

    fn hk(&self, dir: &Path, extra: &[(&str, String)], args: &[&str]) -> Result<(Sample, String)> {
        self.meter.run(&self.hitkeep, args, &self.env(dir, extra))
    }

    fn base(&self, args: &[&str]) -> Result<(Sample, String)> {
        self.meter.run(&self.baseline, args, &[])
    }

    fn fresh(&self, name: &str) -> Result<PathBuf> {
        let dir = self.work.join(name);
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        Ok(dir)
    }

    /// Demo data in HitKeep 2.8's layout: the default tenant's rows in the shared database, where
    /// hk-baseline's bare archive looks for them, and the shape every recorded run measured.
    fn demo(&self, hits: u64, tenants: u64) -> Result<PathBuf> {
        self.demo_in(hits, tenants, "2.8")
    }

    /// Demo data in `layout` (`2.8` or `2.13`), synced to disk.
    fn demo_in(&self, hits: u64, tenants: u64, layout: &str) -> Result<PathBuf> {
        let src = self.fresh("src")?;
        let (h, t) = (hits.to_string(), tenants.to_string());
        self.hk(
            &src,
            &[],
            &["demo", "--hits", &h, "--tenants", &t, "--layout", layout],
        )?;
        // Gigabytes just written (3.9 GB at 16M hits): its write-back belongs to no timed run.
        tools::run(&mut std::process::Command::new("sync"))?;
        Ok(src)
    }

    /// One data size: backup, restore and archive with their baselines, median of `runs`.
    fn size(&self, hits: u64) -> Result<SizeResult> {
        let mut r = SizeResult::new(hits);
        let mut samples: [Vec<Sample>; 9] = Default::default();
        for run in 0..self.runs {
            // New data every run, so that each backup to S3 is the first upload of its bytes: a
            // snapshot of unchanged data repeats most of the last one's bytes, which a store that
            // keeps blocks by their hash (Garage) hardly writes again, and the ratio would flatter us.
            println!("bench: {hits} hits: generating the demo data");
            let src = self.demo(hits, 4)?;
            r.db_bytes = du(&src)?;
            let prefix = format!("bench/{hits}/r{run}");
            let backups = self.s3.url(&format!("{prefix}/backups"));
            // Backup to S3.
            let (s, _) = self.hk(
                &src,
                &[("HITKEEP_BACKUP_PATH", backups.clone())],
                &["backup", "run"],
            )?;
            samples[0].push(s);
            // The same backup into a local directory.
            let local = self.fresh("local-backup")?;
            let (s, _) = self.hk(
                &src,
                &[("HITKEEP_BACKUP_PATH", local.display().to_string())],
                &["backup", "run"],
            )?;
            samples[8].push(s);
            // The same databases exported to local disk, bare.
            let dbs = self.backed_up_dbs(&src, &format!("{prefix}/backups"))?;
            let export = self.fresh("export")?;
            let mut args = vec!["export", export.to_str().context("UTF-8")?];
            args.extend(dbs.iter().map(String::as_str));
            samples[1].push(self.base(&args)?.0);
            r.export_bytes = du(&export)?;
            // rclone uploading those files, at defaults and tuned.
            for (i, flags) in [&[][..], RCLONE_TUNED].into_iter().enumerate() {
                let key = self.s3.key(&format!("{prefix}/rclone{i}"));
                let s = self
                    .meter
                    .time(|| self.rclone.copy(&export, &key, true, flags))?;
                samples[2 + i].push(s);
            }
            // Restore latest, against rclone downloading the tuned upload plus a bare IMPORT.
            let rclone1 = self.s3.key(&format!("{prefix}/rclone1"));
            let (ours, bare) = self.restore_pair(&backups, &rclone1, dbs.len(), true)?;
            samples[4].push(ours);
            samples[5].push(bare);
            // Archive one site with 90% of its rows expired, and the bare COPY + DELETE of the same rows.
            let (hk_rows, cutoff, s) = self.archive_run(&src, &format!("{prefix}/archive"))?;
            samples[6].push(s);
            let (bare_rows, s) = self.bare_archive(&src, &cutoff)?;
            samples[7].push(s);
            anyhow::ensure!(
                hk_rows == bare_rows,
                "hitkeep archived {hk_rows} rows, the bare COPY + DELETE {bare_rows}"
            );
            r.archived_rows = bare_rows;
            println!("bench: {hits} hits: run {} of {} done", run + 1, self.runs);
        }
        let m: Vec<Sample> = samples.iter().map(|s| median(s)).collect();
        (r.backup, r.export, r.rclone_default, r.rclone_tuned) = (m[0], m[1], m[2], m[3]);
        (r.restore, r.rclone_import, r.archive, r.copy_delete) = (m[4], m[5], m[6], m[7]);
        r.local_backup = m[8];
        Ok(r)
    }

    /// hitkeep's restore of latest from `backups`, and the bare path it is measured against: rclone
    /// downloading (tuned) the `count` exports it uploaded under `exports`, then a bare `IMPORT`
    /// of each, one after the other. `ours_first` says which runs first.
    fn restore_pair(
        &self,
        backups: &str,
        exports: &str,
        count: usize,
        ours_first: bool,
    ) -> Result<(Sample, Sample)> {
        let ours = || -> Result<Sample> {
            let target = self.fresh("restore")?;
            let restore = ["recover", "restore-backup", "-from", backups, "-yes"];
            Ok(self.hk(&target, &[], &restore)?.0)
        };
        let bare = || -> Result<Sample> {
            let down = self.fresh("download")?;
            let mut bare = self
                .meter
                .time(|| self.rclone.copy(&down, exports, false, RCLONE_TUNED))?;
            let imported = self.fresh("imported")?;
            for i in 0..count {
                let (d, db) = (down.join(i.to_string()), imported.join(format!("{i}.db")));
                let (s, _) = self.base(&[
                    "import",
                    d.to_str().context("UTF-8")?,
                    db.to_str().context("UTF-8")?,
                ])?;
                bare = bare.then(s);
            }
            Ok(bare)
        };
        if ours_first {
            Ok((ours()?, bare()?))
        } else {
            let bare = bare()?;
            Ok((ours()?, bare))
        }
    }

    /// The shared database and each tenant database the backup at `backups` holds, as files under `src`.
    fn backed_up_dbs(&self, src: &Path, backups: &str) -> Result<Vec<String>> {
        let mut dbs = vec![src.join("hitkeep.db").display().to_string()];
        for tenant in self
            .rclone
            .dirs(&self.s3.key(&format!("{backups}/tenants")))?
        {
            let db = src.join("data/tenants").join(&tenant).join("hitkeep.db");
            dbs.push(db.display().to_string());
        }
        Ok(dbs)
    }

    /// A copy of `src` with one site expiring 90% of its rows: the site's id and the copy.
    fn expiring_copy(&self, src: &Path, name: &str) -> Result<(String, PathBuf)> {
        let dir = self.fresh(name)?;
        tools::run(
            std::process::Command::new("cp")
                .arg("-a")
                .arg(src.join("hitkeep.db"))
                .arg(&dir),
        )?;
        let db = dir.join("hitkeep.db").display().to_string();
        let (_, site) = self.base(&["expire", &db, ARCHIVE_DAYS])?;
        Ok((site.trim().to_owned(), dir))
    }

    /// `hitkeep archive run` on an expiring copy: the rows it archived, its cutoff and the sample.
    fn archive_run(&self, src: &Path, prefix: &str) -> Result<(u64, String, Sample)> {
        let (_, dir) = self.expiring_copy(src, "archive")?;
        let env = [("HITKEEP_ARCHIVE_PATH", self.s3.url(prefix))];
        let (s, out) = self.hk(&dir, &env, &["archive", "run"])?;
        let (rows, cutoff) = archived(&out).with_context(|| format!("no row count in {out:?}"))?;
        Ok((rows, cutoff, s))
    }

    /// The bare COPY + DELETE on another copy, at hitkeep's cutoff: a cutoff of its own, taken
    /// moments later, would take in the rows written in between.
    fn bare_archive(&self, src: &Path, cutoff: &str) -> Result<(u64, Sample)> {
        let (site, dir) = self.expiring_copy(src, "bare-archive")?;
        let db = dir.join("hitkeep.db").display().to_string();
        let out = dir.join("parquet").display().to_string();
        let (s, rows) = self.base(&["archive", &db, &site, cutoff, &out])?;
        Ok((rows.trim().parse()?, s))
    }

    /// One cycle over `tenants` small tenant databases, one at a time and two and four at once.
    fn tenants(&self, tenants: u64) -> Result<TenantResult> {
        println!("bench: {tenants} tenants");
        let src = self.demo(2_000 * tenants, tenants)?;
        let mut r = TenantResult {
            tenants,
            by_concurrency: Vec::new(),
        };
        for concurrency in [1, 2, 4] {
            let mut samples = Vec::new();
            for run in 0..self.runs {
                let url = self
                    .s3
                    .url(&format!("bench/tenants{tenants}/c{concurrency}r{run}"));
                let env = [
                    ("HITKEEP_BACKUP_PATH", url),
                    ("HITKEEP_BACKUP_CONCURRENCY", concurrency.to_string()),
                ];
                samples.push(self.hk(&src, &env, &["backup", "run"])?.0);
            }
            r.by_concurrency.push((concurrency, median(&samples)));
        }
        Ok(r)
    }

    /// ListObjectsV2 requests of a restore's planning with 1 and with 1,001 snapshots present, and of
    /// `backup list`, which reads everything by design.
    fn listing(&self) -> Result<results::Listing> {
        println!("bench: finding latest among 1,000 snapshots");
        let src = self.demo(20_000, 2)?;
        let prefix = "bench/listing/backups";
        let proxy = FaultProxy::start(self.s3.addr())?;
        let via_proxy = |extra: Vec<(&'static str, String)>| {
            let mut e = extra;
            e.push(("HITKEEP_S3_ENDPOINT", proxy.endpoint()));
            e.push(("HITKEEP_BACKUP_PATH", self.s3.url(prefix)));
            e
        };
        self.hk(&src, &via_proxy(vec![]), &["backup", "run"])?;
        let count = |args: &[&str]| -> Result<u64> {
            let target = self.fresh("listing-restore")?;
            let before = proxy.stats.lists.load(std::sync::atomic::Ordering::Relaxed);
            self.hk(&target, &via_proxy(vec![]), args)?;
            Ok(proxy.stats.lists.load(std::sync::atomic::Ordering::Relaxed) - before)
        };
        let url = self.s3.url(prefix);
        let restore = [
            "recover",
            "restore-backup",
            "-from",
            url.as_str(),
            "-dry-run",
        ];
        let one = count(&restore)?;
        // 1,000 older cycles, hourly, each a complete-looking shared snapshot (a manifest).
        let latest = self
            .rclone
            .dirs(&self.s3.key(&format!("{prefix}/shared")))?;
        let latest = latest
            .last()
            .context("the backup left no snapshot")?
            .clone();
        let manifest = String::from_utf8(
            self.rclone.cat(
                &self
                    .s3
                    .key(&format!("{prefix}/shared/{latest}/manifest.json")),
            )?,
        )?;
        let tree = self.fresh("history")?;
        let now = jiff::Timestamp::now();
        for hour in 2..1002 {
            let t = now - jiff::SignedDuration::from_hours(hour);
            let id = t.strftime("%Y-%m-%dT%H%M%SZ").to_string();
            let dir = tree.join("shared").join(&id);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("manifest.json"), manifest.replace(&latest, &id))?;
        }
        self.rclone
            .copy(&tree, &self.s3.key(prefix), true, &["--transfers", "32"])?;
        let thousand = count(&restore)?;
        let list = count(&["backup", "list"])?;
        Ok(results::Listing {
            one,
            thousand,
            list,
        })
    }
}

/// Puts the run's tables (not the CPU breakdown) between the README's bench markers, headings
/// demoted, so the front page always shows the latest run.
fn update_readme(readme: &Path, md: &str) -> Result<()> {
    const START: &str = "<!-- bench:start -->";
    const END: &str = "<!-- bench:end -->";
    let text = std::fs::read_to_string(readme)?;
    let (Some(a), Some(b)) = (text.find(START), text.find(END)) else {
        anyhow::bail!("{} has no {START} … {END} markers", readme.display());
    };
    let body = md.split_once('\n').map_or(md, |(_, rest)| rest);
    let body = body
        .split("\n## Why targets were missed")
        .next()
        .unwrap_or(body)
        .split("\n## Where the time goes")
        .next()
        .unwrap_or(body)
        .replace("\n## ", "\n#### ");
    let section = format!(
        "{START}\n{}\n\n![time and peak memory against data size](bench/results/latest.png)\n\n\
         Why the misses, and where the time goes: [bench/results/latest.md](bench/results/latest.md).\n{END}",
        body.trim()
    );
    let updated = format!("{}{section}{}", &text[..a], &text[b + END.len()..]);
    std::fs::write(readme, updated)?;
    Ok(())
}

/// The rows `hitkeep archive run` reports archived and their cutoff, from the one site that expires.
fn archived(out: &str) -> Option<(u64, String)> {
    // "site … (tenant default): 267088 rows archived to … (before 2026-09-18T06:52:10.123456Z)"
    let line = out.lines().find(|l| l.contains(" rows archived to "))?;
    let (before, after) = line.split_once(" rows archived")?;
    let rows = before.rsplit(' ').next()?.parse().ok()?;
    let cutoff = after.rsplit_once("(before ")?.1.strip_suffix(')')?;
    Some((rows, cutoff.to_owned()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_archived_rows_and_cutoff_are_read_from_hitkeeps_output() {
        let out = "site 5c66 (tenant default): nothing expired\n\
                   site 7a1b (tenant default): 267088 rows archived to s3://b/a/x.parquet (before 2026-09-18T06:52:10.123456Z)\n";
        assert_eq!(
            super::archived(out),
            Some((267_088, "2026-09-18T06:52:10.123456Z".to_owned()))
        );
        assert_eq!(
            super::archived("site 5c66 (tenant default): nothing expired\n"),
            None
        );
    }
}
