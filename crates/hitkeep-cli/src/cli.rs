//! The command line, as clap sees it.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::flags::SettingFlags;

const AFTER_HELP: &str = "\
Every setting can also come from a HITKEEP_* variable or a config file (--config or HITKEEP_CONFIG): TOML,
or HitKeep's own YAML file (.yaml/.yml), whose server-only keys are ignored.
Precedence: flags > environment > config file > defaults. Go-style single-dash flags (-s3-region) work too.

Example (MinIO):
  HITKEEP_BACKUP_PATH=s3://hitkeep/backups HITKEEP_S3_ENDPOINT=localhost:9000 \\
  HITKEEP_S3_URL_STYLE=path HITKEEP_S3_USE_SSL=false HITKEEP_S3_REGION=us-east-1 hitkeep config check";

/// Backups, restores and retention archives of HitKeep's DuckDB data, to local disk or S3.
#[derive(Debug, Parser)]
#[command(name = "hitkeep", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Config file: HitKeep's YAML file if it ends in .yaml/.yml (its keys: s3-region: auto; HitKeep's other
    /// keys are ignored), else TOML (keys are the variable names without HITKEEP_, lower-cased:
    /// s3_region = "auto")
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
    #[command(
        subcommand,
        after_help = "Example:\n  HITKEEP_S3_REGION=eu-central-1 hitkeep config check"
    )]
    Config(ConfigCommand),
    /// Snapshots of the shared and every tenant database.
    #[command(
        subcommand,
        after_help = "Example:\n  HITKEEP_BACKUP_PATH=s3://my-analytics-bucket/hitkeep/backups HITKEEP_S3_REGION=eu-central-1 hitkeep backup run"
    )]
    Backup(BackupCommand),
    /// Per-site retention archives: expired rows to Parquet, verified, then out of DuckDB.
    #[command(
        subcommand,
        after_help = "Example:\n  HITKEEP_ARCHIVE_PATH=s3://hitkeep/archive hitkeep archive run --dry-run"
    )]
    Archive(ArchiveCommand),
    /// Self-test the configured backup and archive destinations and the local data: exit 0 (all good),
    /// 1 (warnings) or 2 (failures).
    #[command(
        after_help = "Example:\n  HITKEEP_BACKUP_PATH=s3://hitkeep/backups HITKEEP_S3_ENDPOINT=localhost:9000 HITKEEP_S3_URL_STYLE=path \\\n  HITKEEP_S3_USE_SSL=false hitkeep doctor"
    )]
    Doctor {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell) to stdout.
    #[command(after_help = "Example:\n  hitkeep completions bash > /etc/bash_completion.d/hitkeep")]
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Offline recovery tools.
    #[command(
        subcommand,
        after_help = "Example:\n  ./hitkeep recover restore-backup -from s3://my-analytics-bucket/hitkeep/backups -snapshot 2026-03-08T120000Z -s3-region eu-central-1 -yes"
    )]
    Recover(RecoverCommand),
    /// Run the scheduler: a backup shortly after start, then every HITKEEP_BACKUP_INTERVAL minutes.
    #[command(
        after_help = "Example:\n  HITKEEP_BACKUP_PATH=s3://my-analytics-bucket/hitkeep/backups HITKEEP_S3_REGION=eu-central-1 hitkeep serve"
    )]
    Serve,
    /// Create a realistic HitKeep-shaped demo data set at HITKEEP_DB_PATH and HITKEEP_DATA_PATH.
    #[command(
        after_help = "Example:\n  HITKEEP_DB_PATH=/tmp/hk/hitkeep.db HITKEEP_DATA_PATH=/tmp/hk/data hitkeep demo --hits 1000000"
    )]
    Demo {
        /// Hits in total, shared between the default tenant and the others.
        #[arg(long, default_value_t = 100_000)]
        hits: u64,
        /// Active tenants, each with a database of its own.
        #[arg(long, default_value_t = 2)]
        tenants: usize,
        /// The HitKeep release whose layout to write: 2.13 (the default tenant in its own database, no
        /// keys on the raw analytics tables) or 2.8 (its analytics in the shared database).
        #[arg(long, value_name = "RELEASE", default_value = "2.13", value_parser = hitkeep_release())]
        layout: hitkeep_data::TenantLayout,
    },
}

/// `2.13` or `2.8`, as HitKeep's releases are named, to the data layout each one writes.
fn hitkeep_release() -> impl clap::builder::TypedValueParser<Value = hitkeep_data::TenantLayout> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["2.13", "2.8"]).map(|release| {
        match release.as_str() {
            "2.8" => hitkeep_data::TenantLayout::PreSplit,
            _ => hitkeep_data::TenantLayout::Split,
        }
    })
}

#[derive(Debug, Subcommand)]
pub enum BackupCommand {
    /// Run one backup cycle now (then prune local snapshots beyond HITKEEP_BACKUP_RETENTION).
    #[command(
        after_help = "Example:\n  HITKEEP_BACKUP_PATH=/var/lib/hitkeep/backups hitkeep backup run"
    )]
    Run,
    /// List every snapshot of every database, with its state, size and rows.
    #[command(
        after_help = "Example:\n  HITKEEP_BACKUP_PATH=s3://my-analytics-bucket/hitkeep/backups HITKEEP_S3_REGION=eu-central-1 hitkeep backup list"
    )]
    List {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Re-read a snapshot and check every object against its manifest.
    #[command(after_help = "Example:\n  hitkeep backup verify -snapshot latest --deep")]
    Verify {
        /// The snapshot id, or `latest` (the newest committed cycle).
        #[arg(long, value_name = "ID|latest", value_parser = snapshot_or_latest)]
        snapshot: Option<String>,
        /// Also import the snapshot into a scratch DuckDB and compare every table's row count.
        #[arg(long)]
        deep: bool,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Delete snapshots beyond HITKEEP_BACKUP_RETENTION per database (local or S3), after showing them.
    #[command(
        after_help = "Example:\n  HITKEEP_BACKUP_PATH=s3://my-analytics-bucket/hitkeep/backups hitkeep backup prune -yes"
    )]
    Prune {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Show what would be deleted and stop.
        #[arg(long)]
        dry_run: bool,
    },
    /// Write a cycle (full or incremental) as plain folders that HitKeep's restore and a bare
    /// `IMPORT DATABASE` read.
    #[command(
        name = "export-plain",
        after_help = "Example:\n  hitkeep backup export-plain -snapshot 2026-03-08T120000Z /srv/restore/plain"
    )]
    ExportPlain {
        /// The snapshot id, or `latest` (this installation's newest committed cycle).
        #[arg(long, value_name = "ID|latest", value_parser = snapshot_or_latest)]
        snapshot: Option<String>,
        /// A folder that does not exist yet.
        dir: std::path::PathBuf,
    },
    /// Pin a committed cycle so that no prune deletes it (nor the pool objects it names).
    #[command(after_help = "Example:\n  hitkeep backup pin -snapshot 2026-03-08T120000Z")]
    Pin {
        /// The snapshot id, or `latest` (this installation's newest committed cycle).
        #[arg(long, value_name = "ID|latest", value_parser = snapshot_or_latest)]
        snapshot: Option<String>,
    },
    /// Remove a pin: the retention decides again whether the cycle stays.
    #[command(after_help = "Example:\n  hitkeep backup unpin -snapshot 2026-03-08T120000Z")]
    Unpin {
        /// The pinned snapshot's id.
        #[arg(long, value_name = "ID", value_parser = snapshot_or_latest)]
        snapshot: String,
    },
    /// Print an S3 lifecycle configuration for the backup prefix (JSON, as `aws s3api
    /// put-bucket-lifecycle-configuration` takes it).
    #[command(
        after_help = "Example:\n  HITKEEP_BACKUP_PATH=s3://my-analytics-bucket/hitkeep/backups hitkeep backup lifecycle > lifecycle.json"
    )]
    Lifecycle,
    /// Make an age key pair for encrypted snapshots: writes the private key to FILE (never
    /// replacing one) and prints the public key for HITKEEP_BACKUP_RECIPIENTS.
    #[command(
        after_help = "Example (on the machine that will restore, not the HitKeep host):\n  hitkeep backup keygen /root/hitkeep-backup.key\n  # then, on the HitKeep host: HITKEEP_BACKUP_RECIPIENTS=<the printed age1… key>"
    )]
    Keygen {
        /// Where to write the private key (an age identity file); must not exist yet.
        file: std::path::PathBuf,
    },
    /// Make a tenant's backups unreadable (HITKEEP_BACKUP_TENANT_KEYS): delete the tenant's key
    /// files from the backup location, after showing which snapshots that makes unreadable and
    /// which it leaves.
    #[command(
        name = "forget-tenant",
        after_help = "Example:\n  HITKEEP_BACKUP_PATH=s3://my-analytics-bucket/hitkeep/backups hitkeep backup forget-tenant 5c6644da-ef00-45e6-825d-c755d19d7f9f"
    )]
    ForgetTenant {
        /// The tenant's UUID.
        tenant: uuid::Uuid,
        /// Do not ask for confirmation (typing the tenant's UUID).
        #[arg(long)]
        yes: bool,
        /// Show what would be deleted and stop.
        #[arg(long)]
        dry_run: bool,
    },
    /// Seal every tenant key file to the current HITKEEP_BACKUP_RECIPIENTS (key rotation), opening
    /// each with HITKEEP_BACKUP_IDENTITY_FILE; the snapshots themselves are not touched.
    #[command(
        after_help = "Example:\n  HITKEEP_BACKUP_RECIPIENTS=age1new... HITKEEP_BACKUP_IDENTITY_FILE=/root/old.key hitkeep backup rewrap"
    )]
    Rewrap {
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Show what would be rewritten and stop.
        #[arg(long)]
        dry_run: bool,
    },
    /// Show the scheduler's last results.
    #[command(
        after_help = "Example:\n  HITKEEP_DATA_PATH=/var/lib/hitkeep/data hitkeep backup status --json"
    )]
    Status {
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
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

#[derive(Debug, Subcommand)]
pub enum RecoverCommand {
    /// Restore the shared and tenant databases from a snapshot (run while HitKeep is stopped).
    #[command(
        after_help = "Example (the guide's):\n  ./hitkeep recover restore-backup \\\n    -from s3://my-analytics-bucket/hitkeep/backups \\\n    -snapshot 2026-03-08T120000Z \\\n    -s3-region eu-central-1 \\\n    -yes"
    )]
    RestoreBackup {
        /// The backup location: a directory or s3://bucket/prefix.
        #[arg(long, value_name = "PATH")]
        from: String,
        /// The snapshot id (YYYY-MM-DDTHHMMSSZ); default: the newest committed cycle.
        #[arg(long, value_name = "ID", value_parser = snapshot_or_latest)]
        snapshot: Option<String>,
        /// Whose newest cycle to restore, when several installations back up to -from (see the
        /// SOURCE column of `hitkeep backup list`).
        #[arg(long, value_name = "ID", value_parser = source_id)]
        source: Option<String>,
        /// Restore only this tenant (repeatable).
        #[arg(long = "tenant", value_name = "UUID")]
        tenants: Vec<String>,
        /// Restore the shared database only.
        #[arg(long, conflicts_with = "tenants")]
        shared_only: bool,
        /// Print the plan and stop.
        #[arg(long)]
        dry_run: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Restore the exact database and WAL that the HitKeep server kept in a recovery bundle before an
    /// automatic DuckDB recovery, into -db (run while HitKeep is stopped).
    #[command(
        after_help = "Example:\n  ./hitkeep recover restore-database-bundle \\\n    -from /var/lib/hitkeep/data/recovery/20260308T120000.000000000Z-0123456789abcdef \\\n    -db /var/lib/hitkeep/data/hitkeep.db -yes\n\nA tenant's bundle goes back into that tenant's file: -db {data-path}/tenants/{uuid}/hitkeep.db"
    )]
    RestoreDatabaseBundle {
        /// The bundle directory, holding manifest.json, database.zst and optionally wal.zst.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
    /// Import a tenant's retention archives (local or S3) back into its database: rows already there
    /// are kept once, rows whose site or parent row is gone are skipped (run while HitKeep is stopped).
    #[command(
        after_help = "Example:\n  ./hitkeep recover import-archives -archive-path s3://my-analytics-bucket/hitkeep/archive \\\n    -tenant 5c6644da-ef00-45e6-825d-c755d19d7f9f -yes"
    )]
    ImportArchives {
        /// The tenant to import into; default: the default tenant.
        #[arg(long, value_name = "UUID")]
        tenant: Option<String>,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// Archive every site's expired rows now (and finish any run a crash interrupted).
    #[command(
        after_help = "Example:\n  HITKEEP_ARCHIVE_PATH=s3://hitkeep/archive hitkeep archive run --dry-run"
    )]
    Run {
        /// Print, per site and table, what would be archived; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// List the archive files: site, tenant, time range, rows per table, size.
    #[command(
        after_help = "Example:\n  HITKEEP_ARCHIVE_PATH=s3://hitkeep/archive hitkeep archive list --json"
    )]
    List {
        /// Only this site.
        #[arg(long)]
        site: Option<String>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Run SQL over the view `archive` (a site's archived rows, `_source` naming each row's table).
    #[command(
        after_help = "Example:\n  hitkeep archive query --site 5c6644da-ef00-45e6-825d-c755d19d7f9f \\\n    \"SELECT _source, count(*) FROM archive GROUP BY 1\""
    )]
    Query {
        /// Only this site's files.
        #[arg(long)]
        site: Option<String>,
        /// The SQL to run.
        sql: String,
    },
    /// Put a site's archived rows back into its live tables (rows already present are skipped).
    #[command(
        after_help = "Example:\n  hitkeep archive restore --site 5c6644da-ef00-45e6-825d-c755d19d7f9f --from 2024-01-01 --to 2025-01-01"
    )]
    Restore {
        /// The site.
        #[arg(long)]
        site: String,
        /// Only rows at or after this date (YYYY-MM-DD).
        #[arg(long, value_parser = date)]
        from: Option<String>,
        /// Only rows before this date (YYYY-MM-DD).
        #[arg(long, value_parser = date)]
        to: Option<String>,
    },
}

/// Source ids are checked while parsing, like snapshot ids: a bad one is a usage error (exit 2).
fn source_id(s: &str) -> Result<String, String> {
    s.parse::<hitkeep_data::SourceId>()
        .map(|_| s.to_owned())
        .map_err(|_| {
            format!("{s:?} is not a source id: expected a UUID as `hitkeep backup list` shows")
        })
}

/// Snapshot ids are checked while parsing, so a bad one is a usage error (exit 2) naming the flag.
fn snapshot_or_latest(s: &str) -> Result<String, String> {
    if s == "latest" {
        return Ok(s.to_owned());
    }
    s.parse::<hitkeep_backup::SnapshotId>()
        .map(|id| id.to_string())
        .map_err(|e| e.to_string())
}

/// A calendar date, YYYY-MM-DD.
fn date(s: &str) -> Result<String, String> {
    s.parse::<jiff::civil::Date>()
        .map(|d| d.to_string())
        .map_err(|e| format!("not a date (YYYY-MM-DD, e.g. 2025-01-31): {e}"))
}
