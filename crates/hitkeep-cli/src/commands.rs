//! One function per command; each returns the process exit status.

use std::io::Write as _;
use std::process::ExitCode;

use hitkeep_config::{Config, ConfigError, Sources};

use crate::EXIT_USAGE;
use crate::archive;
use crate::backup;
use crate::cli::{ArchiveCommand, BackupCommand, Cli, Command, ConfigCommand, RecoverCommand};
use crate::recover;
use crate::restore;

pub fn run(cli: &Cli) -> ExitCode {
    let sources = Sources {
        config_file: cli.config.clone(),
        flags: cli.settings.values.clone(),
        ..Sources::with_env(std::env::vars())
    };
    let loaded = Config::load(&sources);
    match &cli.command {
        Some(Command::Config(ConfigCommand::Check { json })) => config_check(&loaded, *json),
        Some(Command::Config(ConfigCommand::Show { json })) => {
            with_config(loaded, |c| config_show(&c, *json))
        }
        Some(Command::Demo {
            hits,
            tenants,
            layout,
        }) => with_config(loaded, |c| {
            backup::demo(&c.settings, *hits, *tenants, *layout)
        }),
        Some(Command::Backup(BackupCommand::Run)) => {
            with_config(loaded, |c| backup::run(&c.settings))
        }
        Some(Command::Backup(BackupCommand::List { json })) => {
            with_config(loaded, |c| backup::list(&c.settings, *json))
        }
        Some(Command::Backup(BackupCommand::Verify {
            snapshot,
            deep,
            json,
        })) => with_config(loaded, |c| {
            backup::verify(&c.settings, snapshot.as_deref(), *deep, *json)
        }),
        Some(Command::Backup(BackupCommand::Status { json })) => {
            with_config(loaded, |c| backup::status(&c.settings, *json))
        }
        Some(Command::Backup(BackupCommand::Prune { yes, dry_run })) => {
            with_config(loaded, |c| backup::prune(&c.settings, *yes, *dry_run))
        }
        Some(Command::Backup(BackupCommand::ExportPlain { snapshot, dir })) => {
            with_config(loaded, |c| {
                backup::export_plain(&c.settings, snapshot.as_deref(), dir)
            })
        }
        Some(Command::Backup(BackupCommand::ForgetTenant {
            tenant,
            yes,
            dry_run,
        })) => with_config(loaded, |c| {
            backup::forget_tenant(&c.settings, *tenant, *yes, *dry_run)
        }),
        Some(Command::Backup(BackupCommand::Rewrap { yes, dry_run })) => {
            with_config(loaded, |c| backup::rewrap(&c.settings, *yes, *dry_run))
        }
        Some(Command::Backup(BackupCommand::Pin { snapshot })) => {
            with_config(loaded, |c| backup::pin(&c.settings, snapshot.as_deref()))
        }
        Some(Command::Backup(BackupCommand::Unpin { snapshot })) => {
            with_config(loaded, |c| backup::unpin(&c.settings, snapshot))
        }
        // No settings: a key pair is made before any installation is configured to use it.
        Some(Command::Backup(BackupCommand::Keygen { file })) => backup::keygen(file),
        Some(Command::Backup(BackupCommand::Lifecycle)) => {
            with_config(loaded, |c| backup::lifecycle(&c.settings))
        }
        Some(Command::Recover(RecoverCommand::RestoreBackup {
            from,
            snapshot,
            source,
            tenants,
            shared_only,
            dry_run,
            yes,
        })) => with_config(loaded, |c| {
            restore::restore_backup(
                &c.settings,
                &restore::Args {
                    from,
                    snapshot: snapshot.as_deref(),
                    source: source.as_deref(),
                    tenants,
                    shared_only: *shared_only,
                    dry_run: *dry_run,
                    yes: *yes,
                },
            )
        }),
        Some(Command::Recover(RecoverCommand::RestoreDatabaseBundle { from, yes })) => {
            with_config(loaded, |c| {
                recover::restore_database_bundle(&c.settings, from, *yes)
            })
        }
        Some(Command::Recover(RecoverCommand::ImportArchives { tenant, yes })) => {
            with_config(loaded, |c| {
                recover::import_archives(&c.settings, tenant.as_deref(), *yes)
            })
        }
        Some(Command::Archive(ArchiveCommand::Run { dry_run })) => {
            with_config(loaded, |c| archive::run(&c.settings, *dry_run))
        }
        Some(Command::Archive(ArchiveCommand::List { site, json })) => with_config(loaded, |c| {
            archive::list(&c.settings, site.as_deref(), *json)
        }),
        Some(Command::Archive(ArchiveCommand::Query { site, sql })) => with_config(loaded, |c| {
            archive::query(&c.settings, site.as_deref(), sql)
        }),
        Some(Command::Archive(ArchiveCommand::Restore { site, from, to })) => {
            with_config(loaded, |c| {
                archive::restore(&c.settings, site, from.as_deref(), to.as_deref())
            })
        }
        Some(Command::Doctor { json }) => {
            with_config(loaded, |c| crate::doctor::doctor(&c.settings, &c, *json))
        }
        Some(Command::Completions { shell }) => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "hitkeep", &mut std::io::stdout());
            ExitCode::SUCCESS
        }
        Some(Command::Serve) | None => with_config(loaded, |c| {
            // The scheduler's command line stays in `ps` for as long as it runs.
            for warning in c.secrets_on_command_line() {
                eprintln!("{warning}");
            }
            backup::serve(&c.settings)
        }),
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
    // The storage crate's caps come last so that no level, however verbose, logs a credential.
    let mut directives = vec![log.level.as_str()];
    directives.extend(hitkeep_storage::LOG_DIRECTIVES);
    let filter = tracing_subscriber::EnvFilter::new(directives.join(","));
    // Colours only for a person at a terminal, never in files or pipes.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi);
    let _ = match log.format {
        hitkeep_config::LogFormat::Json => builder.json().try_init(),
        hitkeep_config::LogFormat::Text => builder.try_init(),
    };
}

fn config_show(config: &Config, json: bool) -> ExitCode {
    // Not a setting but the installation's identity in every snapshot it writes: shown beside them.
    let layout = crate::backup::layout(&config.settings);
    let file = layout.source_file();
    let source = layout.source_id();
    let out = if json {
        let mut value = config.render_json();
        if let Some(object) = value.as_object_mut() {
            object.insert(
                "source_id".into(),
                serde_json::json!({
                    "file": file,
                    "id": source.as_ref().ok().copied().flatten(),
                    "error": source.as_ref().err().map(ToString::to_string),
                }),
            );
        }
        format!("{value:#}\n")
    } else {
        let line = match &source {
            Ok(Some(id)) => format!("source id: {id} (from {})\n", file.display()),
            Ok(None) => format!(
                "source id: none yet (the first backup creates {})\n",
                file.display()
            ),
            Err(e) => format!("source id: unreadable: {e}\n"),
        };
        format!("{}{line}", config.render_text())
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
