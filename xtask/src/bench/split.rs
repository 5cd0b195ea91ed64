//! The restore on HitKeep 2.13's schema (issue 18): `hits`, `events` and `web_vitals` carry no key
//! and no index there, so the keys and indexes our restore builds after the load are the small
//! tables' only. The target is that the restore is no slower than the plain `IMPORT` it replaced:
//! at most 1.0× rclone's download plus a bare `IMPORT` of each database, the baseline of the size
//! panel's restore, at each size of `HITKEEP_BENCH_SPLIT_SIZES` (4M and 16M hits).
//!
//! Each run generates new 2.13 demo data (4 tenants, the default one in a database of its own),
//! backs it up to S3 and exports it bare for rclone, untimed; then both restores are timed.

use anyhow::{Context, Result};

use super::measure::{Sample, du, median};
use super::results::{at_most, mib, ratio, secs};
use super::{Bench, RCLONE_TUNED};

/// One size's medians.
#[derive(Debug)]
pub struct SplitResult {
    pub hits: u64,
    pub db_bytes: u64,
    pub restore: Sample,
    pub bare: Sample,
}

/// The ratio the restore must stay within.
const TARGET: f64 = 1.0;

impl Bench {
    /// The panel at every size.
    pub(super) fn split(&self, sizes: &[u64]) -> Result<Vec<SplitResult>> {
        sizes.iter().map(|&hits| self.split_at(hits)).collect()
    }

    fn split_at(&self, hits: u64) -> Result<SplitResult> {
        let (mut ours, mut bare) = (Vec::new(), Vec::new());
        let mut db_bytes = 0;
        for run in 0..self.runs {
            println!("bench: 2.13 restore panel, {hits} hits: generating the demo data");
            let src = self.demo_in(hits, 4, "2.13")?;
            db_bytes = du(&src)?;
            let prefix = format!("bench/split/{hits}/r{run}");
            let backups = self.s3.url(&format!("{prefix}/backups"));
            self.hk(
                &src,
                &[("HITKEEP_BACKUP_PATH", backups.clone())],
                &["backup", "run"],
            )?;
            let dbs = self.backed_up_dbs(&src, &format!("{prefix}/backups"))?;
            let export = self.fresh("export")?;
            let mut args = vec!["export", export.to_str().context("UTF-8")?];
            args.extend(dbs.iter().map(String::as_str));
            self.base(&args)?;
            let exports = self.s3.key(&format!("{prefix}/rclone"));
            self.rclone.copy(&export, &exports, true, RCLONE_TUNED)?;
            let (o, b) = self.restore_pair(&backups, &exports, dbs.len())?;
            ours.push(o);
            bare.push(b);
            println!(
                "bench: 2.13 restore panel, {hits} hits: run {} of {} done",
                run + 1,
                self.runs
            );
        }
        Ok(SplitResult {
            hits,
            db_bytes,
            restore: median(&ours),
            bare: median(&bare),
        })
    }
}

/// The panel's section of the results.
pub fn section(results: &[SplitResult], memory_limit_mib: u64) -> String {
    let mut md = format!(
        "## Restore on HitKeep 2.13's schema (4 tenants, no keys or indexes on hits, events, web_vitals)\n\n\
         Target: ≤ {TARGET:.2}× (rclone download, tuned, + bare IMPORT DATABASE of each database): no slower \
         than the plain `IMPORT` the restore used before issue 18.\n\n\
         | hits | database files | hitkeep restore | rclone + IMPORT | ratio | CPU with the server's, hitkeep / bare | peak RSS hitkeep |\n\
         |---:|---:|---:|---:|---|---|---:|\n"
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} / {} | {} |\n",
            r.hits,
            mib(r.db_bytes),
            secs(r.restore.wall),
            secs(r.bare.wall),
            at_most(ratio(r.restore.wall, r.bare.wall), TARGET),
            secs(r.restore.cpu + r.restore.server_cpu),
            secs(r.bare.cpu + r.bare.server_cpu),
            mib(r.restore.rss),
        ));
    }
    md.push_str(&format!(
        "\nMemory: the peak-RSS bound is DuckDB's limit ({memory_limit_mib} MiB) plus 256 MiB.\n"
    ));
    md
}
