//! Runs the `hitkeep` binary as a user would, in a clean environment, and keeps every byte it
//! prints: the secret scan at the end of the run reads that transcript.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Environment changes for one run: `Some` sets a variable, `None` removes it.
#[derive(Clone, Debug, Default)]
pub struct Env(BTreeMap<String, Option<String>>);

impl Env {
    pub fn set(mut self, key: &str, value: impl Into<String>) -> Self {
        self.0.insert(key.to_owned(), Some(value.into()));
        self
    }

    pub fn unset(mut self, key: &str) -> Self {
        self.0.insert(key.to_owned(), None);
        self
    }

    /// `other`'s entries win.
    pub fn with(mut self, other: &Env) -> Self {
        self.0.extend(other.0.clone());
        self
    }
}

/// What a finished run left: exit code (None when killed by a signal) and its output.
#[derive(Debug)]
pub struct Out {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Out {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }

    /// A one-line account for check details.
    pub fn brief(&self) -> String {
        let last = |s: &str| {
            s.lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_owned()
        };
        // A panic's message is two lines above the backtrace note that ends stderr.
        let panic = self
            .stderr
            .lines()
            .skip_while(|l| !l.contains("panicked at"))
            .take(2)
            .collect::<Vec<_>>()
            .join(" ");
        format!(
            "exit {:?}; stdout: {}; stderr: {}{}",
            self.code,
            last(&self.stdout),
            if panic.is_empty() {
                String::new()
            } else {
                format!("{panic} … ")
            },
            last(&self.stderr)
        )
    }

    /// stderr without the log lines, i.e. what the user is told.
    pub fn message(&self) -> String {
        self.stderr
            .lines()
            .filter(|l| !is_log_line(l))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

fn is_log_line(line: &str) -> bool {
    // tracing's text format starts with an RFC 3339 timestamp; JSON logs start with '{'.
    line.len() > 20 && line.as_bytes()[4] == b'-' && line.as_bytes()[10] == b'T'
        || line.starts_with('{')
}

/// A spawned `hitkeep` whose output goes to files until it is waited for or killed.
#[derive(Debug)]
pub struct Running {
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
    pub started: Instant,
}

impl Running {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process has logged `text` yet (its logs go to stderr).
    pub fn has_logged(&self, text: &str) -> Result<bool> {
        let logged = fs::read(&self.stderr)?;
        Ok(text.is_empty() || logged.windows(text.len()).any(|w| w == text.as_bytes()))
    }

    /// Whether the process has ended (it is still collected by `wait`, `kill` or `collect`).
    pub fn exited(&mut self) -> Result<bool> {
        Ok(self.child.try_wait()?.is_some())
    }
}

#[derive(Debug)]
pub struct Hitkeep {
    bin: PathBuf,
    home: PathBuf,
    logs: PathBuf,
    transcript: RefCell<Vec<u8>>,
    runs: RefCell<usize>,
}

impl Hitkeep {
    pub fn new(bin: PathBuf, work: &Path) -> Result<Hitkeep> {
        // An empty HOME: no ~/.aws or ~/.config of the machine leaks into the run.
        let home = work.join("home");
        let logs = work.join("logs");
        fs::create_dir_all(&home)?;
        fs::create_dir_all(&logs)?;
        Ok(Hitkeep {
            bin,
            home,
            logs,
            transcript: RefCell::default(),
            runs: RefCell::new(0),
        })
    }

    pub fn runs(&self) -> usize {
        *self.runs.borrow()
    }

    /// Takes in `other`'s runs and transcript (sections that ran beside this one's).
    pub fn absorb(&self, other: Hitkeep) {
        *self.runs.borrow_mut() += other.runs();
        self.transcript
            .borrow_mut()
            .extend(other.transcript.into_inner());
    }

    /// Everything every run printed, stdout and stderr.
    pub fn transcript(&self) -> std::cell::Ref<'_, Vec<u8>> {
        self.transcript.borrow()
    }

    /// `wrapper` goes before the binary (`unshare --pid --fork --mount-proc`), when not empty.
    fn command(&self, wrapper: &[&str], dir: &Path, env: &Env, args: &[&str]) -> Command {
        let mut cmd = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut cmd = Command::new(program);
                cmd.args(rest).arg(&self.bin);
                cmd
            }
            None => Command::new(&self.bin),
        };
        cmd.current_dir(dir).env_clear().stdin(Stdio::null());
        cmd.env("PATH", std::env::var_os("PATH").unwrap_or_default());
        cmd.env("HOME", &self.home);
        // The most verbose level everywhere, so the secret scan sees every log line there is.
        cmd.env("HITKEEP_LOG_LEVEL", "trace");
        for (key, value) in &env.0 {
            match value {
                Some(v) => cmd.env(key, v),
                None => cmd.env_remove(key),
            };
        }
        cmd.args(args);
        cmd
    }

    pub fn run(&self, dir: &Path, env: &Env, args: &[&str]) -> Result<Out> {
        let running = self.spawn(dir, env, args)?;
        self.wait(running, Duration::from_secs(600))
    }

    /// [`Hitkeep::run`] behind `wrapper`, a command that runs the binary (`unshare … hitkeep args`).
    pub fn run_wrapped(
        &self,
        wrapper: &[&str],
        dir: &Path,
        env: &Env,
        args: &[&str],
    ) -> Result<Out> {
        let running = self.spawn_wrapped(wrapper, dir, env, args)?;
        self.wait(running, Duration::from_secs(600))
    }

    pub fn spawn(&self, dir: &Path, env: &Env, args: &[&str]) -> Result<Running> {
        self.spawn_wrapped(&[], dir, env, args)
    }

    fn spawn_wrapped(
        &self,
        wrapper: &[&str],
        dir: &Path,
        env: &Env,
        args: &[&str],
    ) -> Result<Running> {
        let n = {
            let mut runs = self.runs.borrow_mut();
            *runs += 1;
            *runs
        };
        let stdout = self.logs.join(format!("{n:05}.out"));
        let stderr = self.logs.join(format!("{n:05}.err"));
        let child = self
            .command(wrapper, dir, env, args)
            .stdout(fs::File::create(&stdout)?)
            .stderr(fs::File::create(&stderr)?)
            .spawn()
            .with_context(|| format!("start {} {args:?}", self.bin.display()))?;
        Ok(Running {
            child,
            stdout,
            stderr,
            started: Instant::now(),
        })
    }

    /// Waits for the process; past `limit` it is killed and this fails.
    pub fn wait(&self, mut running: Running, limit: Duration) -> Result<Out> {
        while !running.exited()? {
            if running.started.elapsed() > limit {
                let out = self.kill(running)?;
                bail!(
                    "hitkeep still running after {limit:?}, killed: {}",
                    out.brief()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.collect(running)
    }

    /// kill -9.
    pub fn kill(&self, mut running: Running) -> Result<Out> {
        let _ = running.child.kill();
        self.collect(running)
    }

    /// SIGTERM, as a service manager stops the scheduler.
    pub fn terminate(&self, running: &Running) -> Result<()> {
        let status = Command::new("kill")
            .args(["-TERM", &running.pid().to_string()])
            .status()?;
        anyhow::ensure!(status.success(), "kill -TERM {} failed", running.pid());
        Ok(())
    }

    fn collect(&self, mut running: Running) -> Result<Out> {
        let status = running.child.wait()?;
        let stdout = fs::read(&running.stdout)?;
        let stderr = fs::read(&running.stderr)?;
        let mut transcript = self.transcript.borrow_mut();
        transcript.extend_from_slice(&stdout);
        transcript.extend_from_slice(&stderr);
        Ok(Out {
            code: status.code(),
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: String::from_utf8_lossy(&stderr).into_owned(),
        })
    }
}
