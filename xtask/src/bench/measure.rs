//! One measured process: wall time from here; peak RSS and CPU time from GNU time (`/usr/bin/time`),
//! which reads them from the kernel's rusage of that process alone; and the S3 server's CPU time over
//! the same interval from `/proc/<pid>/stat`. CPU beside wall time tells a wait from a saturated
//! machine: on 2 cores, a run whose CPU (ours plus the server's) is near twice its wall time cannot get
//! faster by overlapping more.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};

use crate::e2e::tools;

/// Wall time, peak resident memory and CPU time of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sample {
    pub wall: Duration,
    /// Peak RSS in bytes.
    pub rss: u64,
    /// User plus system CPU time of the measured process.
    pub cpu: Duration,
    /// CPU time the S3 server spent meanwhile (zero for runs that do not touch it or when it is not
    /// ours to watch).
    pub server_cpu: Duration,
}

impl Sample {
    /// Two steps run one after the other: times add up, memory is the larger peak.
    pub fn then(self, next: Sample) -> Sample {
        Sample {
            wall: self.wall + next.wall,
            rss: self.rss.max(next.rss),
            cpu: self.cpu + next.cpu,
            server_cpu: self.server_cpu + next.server_cpu,
        }
    }

    /// Cores kept busy on average, ours and the server's together.
    pub fn cores_busy(&self) -> f64 {
        (self.cpu + self.server_cpu).as_secs_f64() / self.wall.as_secs_f64().max(1e-9)
    }
}

/// Runs commands under GNU time.
#[derive(Debug)]
pub struct Meter {
    time: PathBuf,
    scratch: PathBuf,
    /// The S3 server's process, when we started it.
    server: Option<u32>,
}

impl Meter {
    pub fn new(scratch: &Path, server: Option<u32>) -> Result<Meter> {
        let time = PathBuf::from("/usr/bin/time");
        if !time.is_file() {
            tools::apt_install("time")?;
        }
        Ok(Meter {
            time,
            scratch: scratch.join("time.out"),
            server,
        })
    }

    /// The server's CPU time so far.
    pub fn server_cpu(&self) -> Duration {
        self.server.map(process_cpu).unwrap_or_default()
    }

    /// Times a step that runs child processes (rclone, say): their CPU time (the children this
    /// process waited for) and the server's meanwhile. Peak memory is not known here and stays zero.
    pub fn time(&self, step: impl FnOnce() -> Result<()>) -> Result<Sample> {
        let me = std::process::id();
        let (server_before, children_before) = (self.server_cpu(), cpu_ticks(me, 13));
        let start = Instant::now();
        step()?;
        Ok(Sample {
            wall: start.elapsed(),
            cpu: cpu_ticks(me, 13).saturating_sub(children_before),
            server_cpu: self.server_cpu().saturating_sub(server_before),
            ..Sample::default()
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
            .arg("%M %U %S")
            .arg("-o")
            .arg(&self.scratch)
            .arg(program)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", std::env::var_os("HOME").unwrap_or_default())
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        let server_before = self.server_cpu();
        let start = Instant::now();
        let out = cmd
            .output()
            .with_context(|| format!("run {}", program.display()))?;
        let wall = start.elapsed();
        let server_cpu = self.server_cpu().saturating_sub(server_before);
        ensure!(
            out.status.success(),
            "{} {} failed: {}{}",
            program.display(),
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let report = std::fs::read_to_string(&self.scratch)?;
        let (kib, user, sys) =
            parse_time(&report).with_context(|| format!("GNU time wrote {report:?}"))?;
        let sample = Sample {
            wall,
            rss: kib * 1024,
            cpu: Duration::from_secs_f64(user + sys),
            server_cpu,
        };
        Ok((sample, String::from_utf8_lossy(&out.stdout).into_owned()))
    }
}

/// GNU time's last line, "%M %U %S": peak KiB, user and system seconds.
fn parse_time(report: &str) -> Option<(u64, f64, f64)> {
    let mut fields = report.lines().last()?.split_whitespace();
    let kib = fields.next()?.parse().ok()?;
    let user = fields.next()?.parse().ok()?;
    let sys = fields.next()?.parse().ok()?;
    Some((kib, user, sys))
}

/// User plus system CPU time of a live process; zero once it is gone.
fn process_cpu(pid: u32) -> Duration {
    cpu_ticks(pid, 11)
}

/// Two CPU fields of `/proc/<pid>/stat` added up, counted from the first field after the command
/// name: at 11 the process's own user and system time (fields 14 and 15), at 13 those of the children
/// it waited for (16 and 17). Clock ticks are 1/100 s on Linux.
fn cpu_ticks(pid: u32, skip: usize) -> Duration {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return Duration::ZERO;
    };
    // The command name (field 2) may hold spaces; the fields after its closing parenthesis do not.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let ticks: u64 = after
        .split_whitespace()
        .skip(skip)
        .take(2)
        .filter_map(|f| f.parse::<u64>().ok())
        .sum();
    Duration::from_millis(ticks * 10)
}

/// The median sample by wall time (memory and CPU: the medians of theirs).
pub fn median(samples: &[Sample]) -> Sample {
    fn mid<T: Ord + Copy + Default>(mut v: Vec<T>) -> T {
        v.sort_unstable();
        v.get(v.len() / 2).copied().unwrap_or_default()
    }
    Sample {
        wall: mid(samples.iter().map(|s| s.wall).collect()),
        rss: mid(samples.iter().map(|s| s.rss).collect()),
        cpu: mid(samples.iter().map(|s| s.cpu).collect()),
        server_cpu: mid(samples.iter().map(|s| s.server_cpu).collect()),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gnu_time_report_is_read_from_its_last_line() {
        let report = "Command exited with non-zero status 1\n204800 1.25 0.50\n";
        assert_eq!(parse_time(report), Some((204_800, 1.25, 0.5)));
        assert_eq!(parse_time("garbage"), None);
    }

    #[test]
    fn this_process_has_spent_some_cpu() {
        let spin = Instant::now();
        while spin.elapsed() < Duration::from_millis(50) {}
        assert!(process_cpu(std::process::id()) >= Duration::from_millis(20));
        assert_eq!(process_cpu(u32::MAX), Duration::ZERO);
    }

    #[test]
    fn a_waited_for_child_counts_as_ours() {
        let meter = Meter {
            time: PathBuf::from("/usr/bin/time"),
            scratch: PathBuf::new(),
            server: None,
        };
        let sample = meter
            .time(|| {
                tools::run(
                    Command::new("sh")
                        .args(["-c", "i=0; while [ $i -lt 200000 ]; do i=$((i+1)); done"]),
                )?;
                Ok(())
            })
            .unwrap();
        assert!(sample.cpu > Duration::ZERO, "{sample:?}");
        assert!(sample.wall >= sample.cpu / 2, "{sample:?}");
    }
}
