//! One measured process: wall time from here, peak RSS from GNU time (`/usr/bin/time -f %M`), which
//! reads it from the kernel's rusage of that process alone.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::e2e::tools;

/// Wall time and peak resident memory of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub wall: Duration,
    /// Peak RSS in bytes.
    pub rss: u64,
}

impl Sample {
    /// Two steps run one after the other: times add up, memory is the larger peak.
    pub fn then(self, next: Sample) -> Sample {
        Sample {
            wall: self.wall + next.wall,
            rss: self.rss.max(next.rss),
        }
    }
}

/// Runs commands under GNU time.
#[derive(Debug)]
pub struct Meter {
    time: PathBuf,
    scratch: PathBuf,
}

impl Meter {
    pub fn new(scratch: &Path) -> Result<Meter> {
        let time = PathBuf::from("/usr/bin/time");
        if !time.is_file() {
            tools::apt_install("time")?;
        }
        Ok(Meter {
            time,
            scratch: scratch.join("time.out"),
        })
    }

    /// Runs `program args` with exactly `env` (plus PATH), and returns its sample and stdout.
    pub fn run(
        &self,
        program: &Path,
        args: &[&str],
        env: &[(String, String)],
    ) -> Result<(Sample, String)> {
        let mut cmd = Command::new(&self.time);
        cmd.arg("-f")
            .arg("%M")
            .arg("-o")
            .arg(&self.scratch)
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let start = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("run {}", program.display()))?;
        let wall = start.elapsed();
        ensure!(
            out.status.success(),
            "{} {} failed: {}{}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report = std::fs::read_to_string(&self.scratch)?;
        let kib: u64 = report
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .with_context(|| format!("GNU time wrote {report:?}"))?;
        let sample = Sample {
            wall,
            rss: kib * 1024,
        };
        Ok((sample, String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

/// The median sample by wall time (memory: the median of the peaks).
pub fn median(samples: &[Sample]) -> Sample {
    let mut walls: Vec<Duration> = samples.iter().map(|s| s.wall).collect();
    let mut rss: Vec<u64> = samples.iter().map(|s| s.rss).collect();
    walls.sort();
    rss.sort_unstable();
    Sample {
        wall: walls.get(walls.len() / 2).copied().unwrap_or_default(),
        rss: rss.get(rss.len() / 2).copied().unwrap_or_default(),
    }
}

/// Bytes of every file under `dir`.
pub fn du(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for p in crate::e2e::entries(dir)? {
        let meta = std::fs::metadata(&p)?;
        if meta.is_file() {
            total += meta.len();
        }
    }
    Ok(total)
}
