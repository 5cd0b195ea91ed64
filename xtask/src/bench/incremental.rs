//! The incremental panel (issue 19): what a cycle costs once only changes are stored.
//!
//! At one size (`HITKEEP_BENCH_INCREMENTAL_HITS`, 16M): full backups to S3, each of new data (median
//! of the runs), then in incremental mode a first cycle, a cycle with no change, and
//! `HITKEEP_BENCH_CYCLES` (24) cycles each after 1% new hits spread over the current month
//! (`hk-baseline append`). Bytes are what each cycle added under its prefix, as rclone lists it
//! (nothing is pruned there). Last, the final data backed up in full too, and both restored (median
//! of the runs) and compared row for row with DuckDB 1.5. The targets are printed beside
//! each figure.

use std::path::Path;

use anyhow::{Context, Result};

use super::Bench;
use super::measure::{Sample, median};
use crate::e2e::tools::Python;

/// What the panel measured.
#[derive(Debug)]
pub struct IncrementalResult {
    pub hits: u64,
    /// A full backup of the first data, median.
    pub full: Sample,
    /// Bytes one full snapshot stores.
    pub full_bytes: u64,
    /// The first incremental cycle (every partition new).
    pub first: Sample,
    pub first_bytes: u64,
    /// A cycle with no change.
    pub unchanged: Sample,
    pub unchanged_bytes: u64,
    /// Objects a cycle with no change added.
    pub unchanged_objects: usize,
    /// The cycles after 1% new hits: median time, median bytes added, and how many.
    pub cycle: Sample,
    pub cycle_bytes: u64,
    pub cycles: usize,
    /// Everything stored after the first cycle and all the others.
    pub stored_bytes: u64,
    /// Restores of latest, the incremental chain's and a full snapshot's of the same data, medians.
    pub restore_incremental: Sample,
    pub restore_full: Sample,
    /// Whether the two restores hold the same rows (DuckDB 1.5 fingerprints).
    pub same_rows: bool,
}

impl Bench {
    pub(super) fn incremental(
        &self,
        hits: u64,
        cycles: usize,
        cache: &Path,
    ) -> Result<IncrementalResult> {
        println!("bench: incremental panel, {hits} hits, {cycles} cycles of 1% new hits");
        let base = format!("bench/incremental/{hits}");
        let mut fulls = Vec::new();
        let mut full_bytes = 0;
        let mut src = None;
        for run in 0..self.runs {
            // New data for every full backup, so that each uploads new bytes as the cycles after 1%
            // new hits do: a store that keeps blocks by their hash (Garage) hardly writes a repeat,
            // which would make the full backup the cycles are measured against look cheaper.
            let data = self.demo(hits, 4)?;
            let url = format!("{base}/full{run}");
            fulls.push(self.cycle_to(&data, &url, "full")?.0);
            full_bytes = self.stored(&url)?;
            src = Some(data);
        }
        let src = src.context("the incremental panel needs at least one run")?;
        let inc = format!("{base}/incremental");
        let (first, first_bytes) = self.cycle_to(&src, &inc, "incremental")?;
        let before = self.rclone.objects(&self.s3.key(&inc))?;
        let (unchanged, unchanged_bytes) = self.cycle_to(&src, &inc, "incremental")?;
        let after = self.rclone.objects(&self.s3.key(&inc))?;
        let unchanged_objects = after.keys().filter(|k| !before.contains_key(*k)).count();
        let db = src.join("hitkeep.db").display().to_string();
        let (mut samples, mut bytes) = (Vec::new(), Vec::new());
        for n in 0..cycles {
            self.base(&["append", &db, "1"])?;
            let (s, b) = self.cycle_to(&src, &inc, "incremental")?;
            samples.push(s);
            bytes.push(b);
            println!("bench: incremental cycle {} of {cycles}: {b} bytes", n + 1);
        }
        bytes.sort_unstable();
        let stored_bytes = self.stored(&inc)?;
        let final_full = format!("{base}/full-final");
        self.cycle_to(&src, &final_full, "full")?;
        let (restore_incremental, restore_full, same_rows) =
            self.restores_compared(&inc, &final_full, cache)?;
        Ok(IncrementalResult {
            hits,
            full: median(&fulls),
            full_bytes,
            first,
            first_bytes,
            unchanged,
            unchanged_bytes,
            unchanged_objects,
            cycle: median(&samples),
            cycle_bytes: bytes.get(bytes.len() / 2).copied().unwrap_or(0),
            cycles,
            stored_bytes,
            restore_incremental,
            restore_full,
            same_rows,
        })
    }

    /// One `backup run` of `src` in `mode` to `prefix`: its sample, and the bytes it added there.
    fn cycle_to(&self, src: &Path, prefix: &str, mode: &str) -> Result<(Sample, u64)> {
        let before = self.stored(prefix)?;
        let env = [
            ("HITKEEP_BACKUP_PATH", self.s3.url(prefix)),
            ("HITKEEP_BACKUP_MODE", mode.to_owned()),
        ];
        let (s, _) = self.hk(src, &env, &["backup", "run"])?;
        Ok((s, self.stored(prefix)? - before))
    }

    /// Bytes stored under `prefix`.
    pub(super) fn stored(&self, prefix: &str) -> Result<u64> {
        Ok(self.rclone.objects(&self.s3.key(prefix))?.values().sum())
    }

    /// Restores of latest from both prefixes, `runs` times each, and whether their rows are equal.
    fn restores_compared(
        &self,
        inc: &str,
        full: &str,
        cache: &Path,
    ) -> Result<(Sample, Sample, bool)> {
        let py = Python::new(cache, &self.work).context("DuckDB 1.5 for the row comparison")?;
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let mut prints = Vec::new();
        for run in 0..self.runs {
            for (prefix, samples) in [(inc, &mut a), (full, &mut b)] {
                let target = self.fresh("incremental-restore")?;
                let from = self.s3.url(prefix);
                let (s, _) = self.hk(
                    &target,
                    &[],
                    &["recover", "restore-backup", "-from", &from, "-yes"],
                )?;
                samples.push(s);
                if run == 0 {
                    prints.push(py.fingerprint(&target.join("hitkeep.db"), &target.join("data"))?);
                }
            }
        }
        let same = prints.len() == 2 && prints[0] == prints[1] && !prints[0].is_empty();
        Ok((median(&a), median(&b), same))
    }
}

impl IncrementalResult {
    /// The panel's section of the results, each figure beside the target.
    pub fn section(&self) -> String {
        let pct = |a: u64, b: u64| 100.0 * a as f64 / b.max(1) as f64;
        let ratio = |a: Sample, b: Sample| a.wall.as_secs_f64() / b.wall.as_secs_f64().max(1e-9);
        let mark = |ok: bool| if ok { "met" } else { "**missed**" };
        let mib = |b: u64| format!("{:.1} MiB", b as f64 / (1024.0 * 1024.0));
        let cycle_bytes = pct(self.cycle_bytes, self.full_bytes);
        let cycle_time = 100.0 * ratio(self.cycle, self.full);
        let stored = self.stored_bytes as f64 / self.full_bytes.max(1) as f64;
        let restore = ratio(self.restore_incremental, self.restore_full);
        let mut md = format!(
            "## Incremental snapshots ({} hits, HitKeep 2.8 layout, 4 tenants)\n\n\
             | | figure | target | |\n|---|---|---|---|\n",
            self.hits
        );
        let mut row = |what: &str, figure: String, target: &str, ok: Option<bool>| {
            md.push_str(&format!(
                "| {what} | {figure} | {target} | {} |\n",
                ok.map_or("", mark)
            ));
        };
        row(
            "full backup to S3 (median)",
            format!(
                "{:.2} s, {}, peak RSS {}",
                self.full.wall.as_secs_f64(),
                mib(self.full_bytes),
                mib(self.full.rss)
            ),
            "",
            None,
        );
        row(
            "first incremental cycle",
            format!(
                "{:.2} s, {}, peak RSS {}",
                self.first.wall.as_secs_f64(),
                mib(self.first_bytes),
                mib(self.first.rss)
            ),
            "",
            None,
        );
        row(
            &format!("a cycle after 1% new hits (median of {})", self.cycles),
            format!(
                "{:.2} s ({cycle_time:.0}% of full), {} ({cycle_bytes:.1}% of full), peak RSS {}",
                self.cycle.wall.as_secs_f64(),
                mib(self.cycle_bytes),
                mib(self.cycle.rss)
            ),
            "≤ 25% of the time, ≤ 5% of the bytes",
            Some(cycle_time <= 25.0 && cycle_bytes <= 5.0),
        );
        row(
            "a cycle with no change",
            format!(
                "{:.2} s, {} in {} objects",
                self.unchanged.wall.as_secs_f64(),
                mib(self.unchanged_bytes),
                self.unchanged_objects
            ),
            "only its manifests (and schema/load.sql per database)",
            Some(self.unchanged_bytes * 50 < self.full_bytes.max(1)),
        );
        row(
            &format!("stored after the first and {} more cycles", self.cycles + 1),
            format!(
                "{} ({stored:.2}× one full snapshot)",
                mib(self.stored_bytes)
            ),
            "≤ 1.5×",
            Some(stored <= 1.5),
        );
        row(
            "restore of the last cycle against a full snapshot of the same data",
            format!(
                "{:.2} s against {:.2} s ({restore:.2}×); rows equal: {}",
                self.restore_incremental.wall.as_secs_f64(),
                self.restore_full.wall.as_secs_f64(),
                self.same_rows
            ),
            "≤ 1.1×, equal row for row",
            Some(restore <= 1.1 && self.same_rows),
        );
        md
    }
}
