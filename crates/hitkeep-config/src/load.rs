//! Layering: built-in defaults < config file (TOML, or HitKeep's YAML) < `HITKEEP_*` environment < flags,
//! merged by figment, which also remembers where each value came from.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};

use crate::key::{CONFIG_FILE_ENV, Key};
use crate::problem::{Origin, Problem, Severity};
use crate::{server, suggest, yaml};

/// The inputs to configuration, gathered by the caller. The library never reads the process environment
/// or argv itself, so services embedding it (and tests) decide what it sees.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `--config FILE`; when `None`, `HITKEEP_CONFIG` from `env` is used, if set.
    pub config_file: Option<PathBuf>,
    /// Environment variables. Empty values are ignored, and so are names that are not settings of ours:
    /// the environment is shared with the HitKeep server. A name close to one of ours that HitKeep does
    /// not read either (`HITKEEP_BACKUP_RETENTON`) gets a warning naming the setting it probably meant.
    pub env: BTreeMap<String, String>,
    /// Command-line flags that were given. Empty values are ignored.
    pub flags: BTreeMap<Key, String>,
}

impl Sources {
    /// Sources with the given environment, e.g. `Sources::with_env(std::env::vars())`. Only `HITKEEP_*`
    /// names are kept, in any case, so that `hitkeep_s3_region` can be pointed out.
    pub fn with_env(vars: impl IntoIterator<Item = (String, String)>) -> Self {
        let env = vars
            .into_iter()
            .filter(|(k, _)| k.to_ascii_uppercase().starts_with("HITKEEP_"))
            .collect();
        Sources {
            env,
            ..Sources::default()
        }
    }

    /// The config file to read, if any: `--config`, else a non-empty `HITKEEP_CONFIG`. A `.yaml` or `.yml`
    /// file is HitKeep's YAML file; anything else is TOML.
    pub fn config_path(&self) -> Option<PathBuf> {
        self.config_file.clone().or_else(|| {
            let from_env = self.env.get(CONFIG_FILE_ENV)?.trim();
            (!from_env.is_empty()).then(|| PathBuf::from(from_env))
        })
    }
}

/// HitKeep's defaults, as the Go server has them.
pub(crate) fn default_text(key: Key) -> Option<&'static str> {
    Some(match key {
        Key::DbPath => "hitkeep.db",
        Key::DataPath => "data",
        Key::ArchivePath => "archive",
        Key::DataRetentionDays => "365",
        Key::BackupInterval => "60",
        Key::BackupRetention => "24",
        Key::BackupKeepLast
        | Key::BackupKeepHourly
        | Key::BackupKeepDaily
        | Key::BackupKeepWeekly
        | Key::BackupKeepMonthly => "0",
        Key::BackupPruneS3 => "false",
        Key::BackupTenantKeys => "false",
        Key::BackupObjectLockDays => "0",
        Key::BackupObjectLockMode => "governance",
        Key::BackupConcurrency => "auto",
        Key::BackupMode => "full",
        Key::S3Region => "us-east-1",
        Key::S3UseSsl => "true",
        Key::S3Checksum => "auto",
        Key::LogLevel => "info",
        Key::LogFormat => "text",
        _ => return None,
    })
}

/// One layer of plain string values, named so figment can tell where a value came from.
struct Layer {
    name: &'static str,
    /// The file the values were read from, if any.
    file: Option<PathBuf>,
    values: BTreeMap<Key, String>,
}

impl Provider for Layer {
    fn metadata(&self) -> Metadata {
        let name = self.name;
        let metadata = Metadata::named(name).interpolater(move |_: &Profile, keys: &[&str]| {
            let key = keys.first().and_then(|k| Key::from_field(k));
            match (name, key) {
                (ENV_LAYER, Some(key)) => key.env().to_owned(),
                (FLAG_LAYER, Some(key)) => format!("--{}", key.flag()),
                (YAML_LAYER, Some(key)) => key.flag().to_owned(),
                _ => keys.join("."),
            }
        });
        match &self.file {
            Some(path) => metadata.source(path.as_path()),
            None => metadata,
        }
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        // Values stay strings: figment's own env parsing would turn "1e3" into a float and lose what was typed.
        let dict = self
            .values
            .iter()
            .map(|(k, v)| (k.field().to_owned(), Value::from(v.clone())))
            .collect();
        Ok(Map::from([(Profile::Default, dict)]))
    }
}

const DEFAULT_LAYER: &str = "default";
const ENV_LAYER: &str = "environment";
const FLAG_LAYER: &str = "flag";
const YAML_LAYER: &str = "YAML file";

/// A value as given, before any parsing, and where it came from.
#[derive(Clone, Debug)]
pub(crate) struct RawValue {
    pub text: String,
    pub origin: Origin,
}

/// The merged, still untyped settings, and problems with the layers themselves (unreadable file, unknown keys).
pub(crate) struct Raw {
    pub values: BTreeMap<Key, RawValue>,
    pub problems: Vec<Problem>,
}

pub(crate) fn load(sources: &Sources) -> Raw {
    let mut problems = Vec::new();
    let non_empty = |v: &String| !v.trim().is_empty();
    let defaults = Key::ALL
        .iter()
        .filter_map(|&k| Some((k, default_text(k)?.to_owned())))
        .collect();
    let env = sources
        .env
        .iter()
        .filter(|(_, v)| non_empty(v))
        .filter_map(|(name, v)| Some((Key::from_env(name)?, v.clone())))
        .collect();
    problems.extend(
        sources
            .env
            .iter()
            .filter(|(_, v)| non_empty(v))
            .filter_map(|(name, _)| near_miss(name)),
    );
    let flags = sources
        .flags
        .iter()
        .filter(|(_, v)| non_empty(v))
        .map(|(k, v)| (*k, v.clone()))
        .collect();

    let mut figment = Figment::from(Layer {
        name: DEFAULT_LAYER,
        file: None,
        values: defaults,
    });
    if let Some(path) = sources.config_path() {
        match check_file(&path) {
            Ok(()) if yaml::is_yaml(&path) => {
                figment = figment.merge(Layer {
                    name: YAML_LAYER,
                    values: yaml::read(&path, &mut problems),
                    file: Some(path),
                });
            }
            Ok(()) => figment = figment.merge(Toml::file_exact(&path)),
            Err(problem) => problems.push(problem),
        }
    }
    let figment = figment
        .merge(Layer {
            name: ENV_LAYER,
            file: None,
            values: env,
        })
        .merge(Layer {
            name: FLAG_LAYER,
            file: None,
            values: flags,
        });

    let merged: Dict = match figment.extract() {
        Ok(dict) => dict,
        Err(e) => {
            // The TOML error quotes the offending line, which may hold a secret: keep position and reason only.
            let text = e.to_string();
            let safe: Vec<&str> = text
                .lines()
                .filter(|l| !l.contains('|'))
                .map(str::trim)
                .filter(|l| !l.is_empty())
                .collect();
            problems.push(file_problem(
                &sources.config_path().unwrap_or_default(),
                &safe.join(" "),
            ));
            return Raw {
                values: BTreeMap::new(),
                problems,
            };
        }
    };
    let mut values = BTreeMap::new();
    for (field, value) in &merged {
        let Some(key) = Key::from_field(field) else {
            problems.push(unknown_key(field, origin_of(&figment, value)));
            continue;
        };
        let origin = origin_of(&figment, value);
        match scalar_text(value) {
            Some(text) if text.trim().is_empty() => {}
            Some(text) => {
                values.insert(
                    key,
                    RawValue {
                        text: text.trim().to_owned(),
                        origin,
                    },
                );
            }
            None => problems.push(Problem {
                severity: Severity::Error,
                key: Some(key),
                value: None,
                origin: Some(origin),
                message: "expected a single value, found a table or list".into(),
                fix: format!("write it as `{} = \"...\"`", key.field()),
            }),
        }
    }
    Raw { values, problems }
}

fn check_file(path: &Path) -> Result<(), Problem> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_file() => Ok(()),
        Ok(_) => Err(file_problem(path, "it is not a regular file")),
        Err(e) => Err(file_problem(path, &e.to_string())),
    }
}

pub(crate) fn file_problem(path: &Path, why: &str) -> Problem {
    Problem {
        severity: Severity::Error,
        key: None,
        value: None,
        origin: Some(Origin::File(path.to_owned())),
        message: format!("cannot read config file {}: {why}", path.display()),
        fix: format!(
            "fix the file, or point --config / {CONFIG_FILE_ENV} at a readable TOML or YAML (.yaml, .yml) file"
        ),
    }
}

/// A warning for a variable that is neither ours nor HitKeep's but close to one of ours: probably a slip.
/// The value is never shown: it may be a secret.
fn near_miss(name: &str) -> Option<Problem> {
    let ours = |n: &str| Key::from_env(n).is_some() || n == CONFIG_FILE_ENV;
    if ours(name) || server::is_server_env(name) {
        return None;
    }
    let known = Key::ALL.iter().map(|k| k.env()).chain([CONFIG_FILE_ENV]);
    // A name closer to one of HitKeep's own is HitKeep's business, not ours.
    let meant = suggest::closest(name, known.chain(server::server_env())).filter(|m| ours(m))?;
    let spelled = Key::from_env(meant).map_or(meant.to_owned(), |k| k.to_string());
    Some(Problem {
        severity: Severity::Warning,
        key: None,
        value: None,
        origin: Some(Origin::Env),
        message: format!(
            "{name} is set, but neither hitkeep nor HitKeep reads it; did you mean {spelled}?"
        ),
        fix: format!("rename {name} to {meant}; until then its value is ignored"),
    })
}

fn unknown_key(field: &str, origin: Origin) -> Problem {
    let known: Vec<&str> = Key::ALL.iter().map(|k| k.field()).collect();
    let meant = suggest::closest(field, known.iter().copied())
        .map(|m| format!("did you mean `{m}`? Otherwise "))
        .unwrap_or_default();
    Problem {
        severity: Severity::Error,
        key: None,
        value: None,
        message: format!(
            "unknown setting `{field}` in {}",
            origin
                .describe(Key::DbPath)
                .trim_start_matches("config file ")
        ),
        origin: Some(origin),
        fix: format!("{meant}use one of: {}", known.join(", ")),
    }
}

fn origin_of(figment: &Figment, value: &Value) -> Origin {
    let Some(meta) = figment.get_metadata(value.tag()) else {
        return Origin::Default;
    };
    match meta.name.as_ref() {
        DEFAULT_LAYER => Origin::Default,
        ENV_LAYER => Origin::Env,
        FLAG_LAYER => Origin::Flag,
        _ => Origin::File(
            meta.source
                .as_ref()
                .and_then(|s| s.file_path())
                .map(Path::to_owned)
                .unwrap_or_default(),
        ),
    }
}

/// A TOML or YAML scalar as text (`60`, `false`, `"s3://b"`); `None` for tables, arrays and null.
pub(crate) fn scalar_text(value: &Value) -> Option<String> {
    match value {
        Value::String(_, s) => Some(s.clone()),
        Value::Char(_, c) => Some(c.to_string()),
        Value::Bool(_, b) => Some(b.to_string()),
        // YAML gives unsigned numbers (`15`), TOML signed ones; `to_i128` knows only the signed.
        Value::Num(_, n) => n
            .to_i128()
            .map(|i| i.to_string())
            .or_else(|| n.to_u128().map(|u| u.to_string()))
            .or_else(|| n.to_f64().map(|f| f.to_string())),
        Value::Empty(..) | Value::Dict(..) | Value::Array(..) => None,
    }
}
