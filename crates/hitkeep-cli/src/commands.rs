//! One function per command; each returns the process exit status.

use std::io::Write as _;
use std::process::ExitCode;

use hitkeep_config::{Config, ConfigError, Location, Sources};

use crate::EXIT_USAGE;
use crate::cli::{Cli, Command, ConfigCommand};

pub fn run(cli: &Cli) -> ExitCode {
    let sources = Sources {
        config_file: cli.config.clone(),
        flags: cli.settings.values.clone(),
        ..Sources::with_env(std::env::vars())
    };
    let loaded = Config::load(&sources);
    match cli.command {
        Some(Command::Config(ConfigCommand::Check { json })) => config_check(&loaded, json),
        Some(Command::Config(ConfigCommand::Show { json })) => {
            with_config(loaded, |c| config_show(&c, json))
        }
        None => with_config(loaded, |c| scheduler(&c)),
    }
}

/// Runs `f` on a valid configuration; otherwise prints every problem and exits 2, having done nothing.
fn with_config(
    loaded: Result<Config, ConfigError>,
    f: impl FnOnce(Config) -> ExitCode,
) -> ExitCode {
    match loaded {
        Ok(config) => {
            init_logging(&config);
            for warning in &config.warnings {
                eprintln!("{warning}");
            }
            f(config)
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

fn init_logging(config: &Config) {
    let log = config.settings.log;
    let filter = tracing_subscriber::EnvFilter::new(log.level.as_str());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match log.format {
        hitkeep_config::LogFormat::Json => builder.json().try_init(),
        hitkeep_config::LogFormat::Text => builder.try_init(),
    };
}

fn config_show(config: &Config, json: bool) -> ExitCode {
    let out = if json {
        format!("{:#}\n", config.render_json())
    } else {
        config.render_text()
    };
    print_stdout(&out)
}

fn config_check(loaded: &Result<Config, ConfigError>, json: bool) -> ExitCode {
    let (errors, warnings) = match loaded {
        Ok(c) => (&[][..], &c.warnings[..]),
        Err(e) => (&e.errors[..], &e.warnings[..]),
    };
    let status = if !errors.is_empty() {
        EXIT_USAGE
    } else if !warnings.is_empty() {
        1
    } else {
        0
    };
    let out = if json {
        format!(
            "{:#}\n",
            serde_json::json!({ "ok": errors.is_empty(), "errors": errors, "warnings": warnings })
        )
    } else {
        let mut out: String = errors
            .iter()
            .chain(warnings)
            .map(|p| format!("{p}\n"))
            .collect();
        out.push_str(&match (errors.len(), warnings.len()) {
            (0, 0) => "configuration OK\n".to_owned(),
            (0, w) => format!("configuration usable, with {w} warning(s)\n"),
            (e, w) => format!("configuration invalid: {e} error(s), {w} warning(s)\n"),
        });
        out
    };
    match print_stdout(&out) {
        ok if ok == ExitCode::SUCCESS => ExitCode::from(status),
        failed => failed,
    }
}

/// The scheduler (`hitkeep` with no command). Backup cycles arrive with the snapshots issue; until then
/// this prints what it would do and says so, rather than pretending to back anything up.
fn scheduler(config: &Config) -> ExitCode {
    let s = &config.settings;
    let mut out = String::from("hitkeep backup scheduler\n");
    match &s.backup.location {
        Some(location) => out.push_str(&format!(
            "  backups:  {} every {} min, keeping {} per database{}\n",
            location,
            s.backup.interval.as_secs() / 60,
            s.backup.retention,
            if matches!(location, Location::S3(_)) {
                format!(" (S3 via {})", s.s3.service_name())
            } else {
                String::new()
            },
        )),
        None => out.push_str("  backups:  disabled (set HITKEEP_BACKUP_PATH)\n"),
    }
    out.push_str(&format!(
        "  archives: {}\n  shared db: {}\n  data path: {}\n",
        s.archive,
        s.db_path.display(),
        s.data_path.display()
    ));
    out.push_str("\nnot implemented yet: backup cycles land with the snapshots work; nothing was backed up.\n");
    print_stdout(&out)
}

fn print_stdout(text: &str) -> ExitCode {
    match std::io::stdout().lock().write_all(text.as_bytes()) {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`| head`) is not worth a panic; anything else is an I/O failure.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitCode::FAILURE
        }
    }
}
