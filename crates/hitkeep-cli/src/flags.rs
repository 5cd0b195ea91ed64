//! The setting flags every command accepts (`--s3-region`, `-s3-region`, ...), generated from the one
//! table of settings in hitkeep-config, and the argv rewrite that makes HitKeep's Go-style single-dash
//! long flags work.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;

use clap::{Arg, ArgAction, ArgMatches, Args, Command, FromArgMatches};
use hitkeep_config::Key;

/// Values given for settings on the command line.
#[derive(Clone, Debug, Default)]
pub struct SettingFlags {
    pub values: BTreeMap<Key, String>,
}

impl FromArgMatches for SettingFlags {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        let values = Key::ALL
            .iter()
            .filter_map(|&key| Some((key, matches.get_one::<String>(key.field())?.clone())))
            .collect();
        Ok(SettingFlags { values })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.values.extend(Self::from_arg_matches(matches)?.values);
        Ok(())
    }
}

impl Args for SettingFlags {
    fn augment_args(cmd: Command) -> Command {
        Key::ALL
            .iter()
            .fold(cmd, |cmd, &key| cmd.arg(setting_arg(key)))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

fn setting_arg(key: Key) -> Arg {
    let arg = Arg::new(key.field())
        .long(key.flag())
        .aliases(key.flag_aliases())
        .global(true)
        .value_name("VALUE")
        .action(ArgAction::Set)
        .help_heading("Settings (each overrides its HITKEEP_* variable)")
        .help(format!("Overrides {}", key.env()));
    if key == Key::S3UseSsl {
        // As in Go: a bare `-s3-use-ssl` means true, and false needs `-s3-use-ssl=false`.
        arg.num_args(0..=1)
            .require_equals(true)
            .default_missing_value("true")
    } else {
        arg
    }
}

/// Rewrites `-long-flag[=v]` to `--long-flag[=v]` for every long flag the command tree knows, so the
/// guide's `-from … -snapshot … -yes` works as written. Short flags (`-h`) and values are left alone,
/// and nothing after `--` is touched.
pub fn normalise_args(cmd: &Command, args: impl IntoIterator<Item = OsString>) -> Vec<OsString> {
    let longs = long_names(cmd);
    let mut out = Vec::new();
    let mut passthrough = false;
    for arg in args {
        let rewritten = match arg.to_str() {
            _ if passthrough => None,
            Some("--") => {
                passthrough = true;
                None
            }
            Some(s) if s.starts_with('-') && !s.starts_with("--") => {
                let name = s[1..].split('=').next().unwrap_or("");
                (name.len() > 1 && longs.contains(name)).then(|| OsString::from(format!("-{s}")))
            }
            _ => None,
        };
        out.push(rewritten.unwrap_or(arg));
    }
    out
}

fn long_names(cmd: &Command) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    collect_longs(cmd, &mut names);
    names
}

fn collect_longs(cmd: &Command, names: &mut BTreeSet<String>) {
    for arg in cmd.get_arguments() {
        names.extend(arg.get_long().map(str::to_owned));
        names.extend(
            arg.get_all_aliases()
                .into_iter()
                .flatten()
                .map(str::to_owned),
        );
    }
    names.extend(["help".to_owned(), "version".to_owned()]);
    for sub in cmd.get_subcommands() {
        collect_longs(sub, names);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    fn norm(args: &[&str]) -> Vec<String> {
        let cmd = crate::cli::Cli::command();
        normalise_args(&cmd, args.iter().map(OsString::from))
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_style_flags_become_long_flags() {
        assert_eq!(
            norm(&[
                "hitkeep",
                "config",
                "show",
                "-s3-region",
                "eu-central-1",
                "-s3-use-ssl=false",
                "-db",
                "x.db",
                "-h"
            ]),
            [
                "hitkeep",
                "config",
                "show",
                "--s3-region",
                "eu-central-1",
                "--s3-use-ssl=false",
                "--db",
                "x.db",
                "-h"
            ]
        );
        assert_eq!(
            norm(&["hitkeep", "-unknown-flag", "--", "-s3-region"]),
            ["hitkeep", "-unknown-flag", "--", "-s3-region"]
        );
    }
}
