//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::flags::SettingFlags;

const AFTER_HELP: &str = "\
Every setting can also come from a HITKEEP_* variable or a TOML config file (--config or HITKEEP_CONFIG).
Precedence: flags > environment > config file > defaults. Go-style single-dash flags (-s3-region) work too.

Example (MinIO):
  HITKEEP_BACKUP_PATH=s3://hitkeep/backups HITKEEP_S3_ENDPOINT=localhost:9000 \\
  HITKEEP_S3_URL_STYLE=path HITKEEP_S3_USE_SSL=false HITKEEP_S3_REGION=us-east-1 hitkeep config check";

/// Backups, restores and retention archives of HitKeep's DuckDB data, to local disk or S3.
#[derive(Debug, Parser)]
#[command(name = "hitkeep", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// TOML config file (keys are the variable names without HITKEEP_, lower-cased: s3_region = "auto")
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,

    #[command(flatten)]
    pub settings: SettingFlags,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Inspect the effective configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print every setting's effective value and where it came from (secrets masked).
    #[command(after_help = "Example:\n  HITKEEP_S3_REGION=auto hitkeep config show --json")]
    Show {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Validate the configuration: exit 0 when clean, 1 with warnings, 2 with errors.
    #[command(
        after_help = "Example:\n  HITKEEP_BACKUP_PATH=s3://my-bucket/hitkeep/backups HITKEEP_S3_REGION=eu-central-1 hitkeep config check"
    )]
    Check {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
}
