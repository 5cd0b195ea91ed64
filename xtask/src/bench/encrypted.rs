//! The encrypted panel (issue 20): full backups and restores of the same data with and without
//! `HITKEEP_BACKUP_RECIPIENTS`, at each size of `HITKEEP_BENCH_ENCRYPTED_SIZES` (4M and 16M hits).
//!
//! Each run generates new demo data, backs it up plain and encrypted, to prefixes of their own, and
//! restores both, alternating which goes first (over an even number of runs) so that neither is
//! favoured; medians of the runs. Both backups of a run are the first upload of their bytes.
//! The restores are compared row for row with DuckDB 1.5 once per size.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, ensure};

use super::Bench;
use super::measure::{Sample, median};
use super::results::{at_most, mib, ratio, secs};
use crate::e2e::tools::Python;

/// One size's medians.
#[derive(Debug)]
pub struct EncryptedResult {
    pub hits: u64,
    pub backup_plain: Sample,
    pub backup_sealed: Sample,
    pub restore_plain: Sample,
    pub restore_sealed: Sample,
    /// Bytes one snapshot stores, plain and encrypted.
    pub bytes_plain: u64,
    pub bytes_sealed: u64,
    /// Whether both restores hold the same rows as each other.
    pub same_rows: bool,
}

/// A key pair from `hitkeep backup keygen`: the identity file and the public key.
fn keygen(hitkeep: &Path, dir: &Path) -> Result<(PathBuf, String)> {
    let file = dir.join("bench.key");
    let out = std::process::Command::new(hitkeep)
        .args(["backup", "keygen"])
        .arg(&file)
        .output()?;
    ensure!(out.status.success(), "backup keygen: {out:?}");
    Ok((file, String::from_utf8(out.stdout)?.trim().to_owned()))
}

impl Bench {
    /// The panel at every size.
    pub(super) fn encrypted(&self, sizes: &[u64], cache: &Path) -> Result<Vec<EncryptedResult>> {
        let (identity, recipient) = keygen(&self.hitkeep, &self.fresh("keys")?)?;
        let py = Python::new(cache, &self.work).context("DuckDB 1.5 for the row comparison")?;
        let keys = [
            ("HITKEEP_BACKUP_RECIPIENTS", recipient),
            (
                "HITKEEP_BACKUP_IDENTITY_FILE",
                identity.display().to_string(),
            ),
        ];
        sizes
            .iter()
            .map(|&hits| self.encrypted_at(hits, &keys, &py))
            .collect()
    }

    fn encrypted_at(
        &self,
        hits: u64,
        keys: &[(&str, String)],
        py: &Python,
    ) -> Result<EncryptedResult> {
        println!("bench: encrypted panel, {hits} hits");
        let (mut samples, mut bytes): ([Vec<Sample>; 4], [u64; 2]) = Default::default();
        let mut prints = Vec::new();
        // An even number of runs, so that each kind goes first as often as the other: the second
        // backup of a pair meets the server still settling the first's gigabyte (at 16M hits, CPU
        // time equal, the wall times of a 3-run median leaned on that).
        let runs = self.runs + self.runs % 2;
        for run in 0..runs {
            // New data for every pair: a plain snapshot of unchanged data is mostly the bytes of
            // the last one, which a store that keeps blocks by their hash (Garage) hardly writes
            // again, while encrypted objects are new bytes every time. Measured by hand at 16M
            // hits, that alone made the encrypted backups look 1.14x where new data gave 1.04x.
            println!("bench: encrypted panel, {hits} hits: generating the demo data");
            let src = self.demo(hits, 4)?;
            let order = if run % 2 == 0 { [0, 1] } else { [1, 0] };
            for sealed in order {
                let prefix = format!(
                    "bench/encrypted/{hits}/{}{run}",
                    ["plain", "sealed"][sealed]
                );
                let mut env = vec![("HITKEEP_BACKUP_PATH", self.s3.url(&prefix))];
                if sealed == 1 {
                    env.extend(keys.iter().cloned());
                }
                samples[sealed].push(self.hk(&src, &env, &["backup", "run"])?.0);
                bytes[sealed] = self.stored(&prefix)?;
                let target = self.fresh("encrypted-restore")?;
                let from = self.s3.url(&prefix);
                let restore = ["recover", "restore-backup", "-from", &from, "-yes"];
                samples[2 + sealed].push(self.hk(&target, &env, &restore)?.0);
                if run == 0 {
                    prints.push(py.fingerprint(&target.join("hitkeep.db"), &target.join("data"))?);
                }
            }
            println!(
                "bench: encrypted panel, {hits} hits: run {} of {runs} done",
                run + 1
            );
        }
        let m: Vec<Sample> = samples.iter().map(|s| median(s)).collect();
        Ok(EncryptedResult {
            hits,
            backup_plain: m[0],
            backup_sealed: m[1],
            restore_plain: m[2],
            restore_sealed: m[3],
            bytes_plain: bytes[0],
            bytes_sealed: bytes[1],
            same_rows: prints.len() == 2 && prints[0] == prints[1] && !prints[0].is_empty(),
        })
    }
}

/// The panel's section of the results, each ratio beside the target.
pub fn section(results: &[EncryptedResult], memory_limit_mib: u64) -> String {
    let mut md = String::from(
        "## Encrypted snapshots (full mode, HitKeep 2.8 layout, 4 tenants, one age recipient)\n\n\
         | hits | backup plain | backup encrypted | ratio (target ≤ 1.05×) | restore plain | restore encrypted | ratio (target ≤ 1.05×) | CPU backup / restore, plain → encrypted | peak RSS backup / restore, encrypted | stored plain / encrypted | restores equal |\n\
         |---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    for r in results {
        md.push_str(&format!(
            "| {} | {} | {} | {} | {} | {} | {} | {} → {} / {} → {} | {} / {} | {} / {} | {} |\n",
            r.hits,
            secs(r.backup_plain.wall),
            secs(r.backup_sealed.wall),
            at_most(ratio(r.backup_sealed.wall, r.backup_plain.wall), 1.05),
            secs(r.restore_plain.wall),
            secs(r.restore_sealed.wall),
            at_most(ratio(r.restore_sealed.wall, r.restore_plain.wall), 1.05),
            secs(r.backup_plain.cpu),
            secs(r.backup_sealed.cpu),
            secs(r.restore_plain.cpu),
            secs(r.restore_sealed.cpu),
            mib(r.backup_sealed.rss),
            mib(r.restore_sealed.rss),
            mib(r.bytes_plain),
            mib(r.bytes_sealed),
            r.same_rows,
        ));
    }
    md.push_str(&format!(
        "\nMemory: the peak-RSS bound is DuckDB's limit ({memory_limit_mib} MiB) plus 256 MiB, as for plain runs.\n"
    ));
    md
}
