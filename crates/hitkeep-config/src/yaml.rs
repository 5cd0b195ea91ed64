//! HitKeep's YAML config file (`hitkeep --config /etc/hitkeep.yaml`), read as HitKeep reads it: one flat
//! mapping of kebab-case keys (the variable without `HITKEEP_`: `backup-path`, `s3-region`) to single values.
//!
//! The file is shared with the HitKeep server, so HitKeep's keys that we do not use (`db-compact-on-start`,
//! `mail-host`, …) are accepted and ignored. Any other key is an error naming it and the file, as in HitKeep;
//! so are duplicate keys and values that are mappings, lists or null.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::Path;

use figment::providers::{Format, Yaml};
use figment::value::Value;
use serde::de::{Deserialize, Deserializer, MapAccess, Visitor};

use crate::key::Key;
use crate::load::{file_problem, scalar_text};
use crate::problem::{Origin, Problem, Severity};
use crate::{server, suggest};

/// Whether `path` names a YAML file (`.yaml`, `.yml`); any other config file is TOML.
pub(crate) fn is_yaml(path: &Path) -> bool {
    path.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("yaml") || e.eq_ignore_ascii_case("yml"))
}

/// Our settings in the YAML file at `path`, as text. Problems with the file or its keys go to `problems`.
pub(crate) fn read(path: &Path, problems: &mut Vec<Problem>) -> BTreeMap<Key, String> {
    let entries = match std::fs::read_to_string(path) {
        Err(e) => Err(e.to_string()),
        // HitKeep takes an empty file (or one of comments only); to serde_yaml it holds no document at all.
        Ok(text) if is_blank(&text) => Ok(Entries::default()),
        Ok(text) => Yaml::from_str::<Entries>(&text).map_err(|e| without_quotes(&e.to_string())),
    };
    let entries = match entries {
        Ok(entries) => entries,
        Err(why) => {
            problems.push(file_problem(path, &why));
            return BTreeMap::new();
        }
    };
    let mut seen = BTreeSet::new();
    let mut values = BTreeMap::new();
    for (key, value) in entries.0 {
        match entry(path, &key, &value, &mut seen) {
            Ok(Some((key, text))) => {
                values.insert(key, text);
            }
            Ok(None) => {}
            Err(problem) => problems.push(problem),
        }
    }
    values
}

/// One top-level entry: `Some` for a setting of ours, `None` for one of HitKeep's that we do not use.
fn entry(
    path: &Path,
    key: &Value,
    value: &Value,
    seen: &mut BTreeSet<String>,
) -> Result<Option<(Key, String)>, Problem> {
    let Value::String(_, name) = key else {
        let shown = scalar_text(key).unwrap_or_else(|| "a mapping or list".into());
        return Err(error(
            path,
            None,
            &format!("the key `{shown}` is not a setting name"),
            "use HitKeep's kebab-case keys, e.g. `s3-region: auto`".into(),
        ));
    };
    if !seen.insert(name.clone()) {
        return Err(error(
            path,
            None,
            &format!("the key `{name}` appears more than once"),
            "keep one of them".into(),
        ));
    }
    // `http-addr` in HitKeep's file is the server's own listen address (":8080"); read as ours, the
    // scheduler would try to bind the server's port. Ours comes from the environment or TOML only.
    let ours = Key::ALL
        .iter()
        .copied()
        .find(|k| k.flag() == name.as_str())
        .filter(|k| *k != Key::HttpAddr);
    if ours.is_none() && !server::is_server_file_key(name) {
        return Err(unknown_key(path, name));
    }
    let text = single_value(path, name, ours, value)?;
    Ok(ours.map(|key| (key, text)))
}

/// The value as text, or the error HitKeep would give: only single values are allowed.
fn single_value(
    path: &Path,
    name: &str,
    key: Option<Key>,
    value: &Value,
) -> Result<String, Problem> {
    let (found, fix) = match value {
        Value::Empty(..) => (
            "no value (null)",
            format!(
                "give it a value, or delete the line (or comment it out: `# {name}:`) to leave it unset"
            ),
        ),
        Value::Dict(..) => (
            "a mapping",
            format!("write it on one line: `{name}: value`"),
        ),
        Value::Array(..) => ("a list", format!("write it on one line: `{name}: value`")),
        _ => match scalar_text(value) {
            Some(text) => return Ok(text),
            None => (
                "a value that is not text, a number or a boolean",
                format!("quote it: `{name}: \"value\"`"),
            ),
        },
    };
    Err(error(
        path,
        key,
        &format!("`{name}` has {found}; HitKeep's YAML file takes a single value per key"),
        fix,
    ))
}

fn unknown_key(path: &Path, name: &str) -> Problem {
    let ours: Vec<&str> = Key::ALL.iter().map(|k| k.flag()).collect();
    let hitkeeps: Vec<String> = server::server_file_keys().collect();
    let known = ours
        .iter()
        .copied()
        .chain(hitkeeps.iter().map(String::as_str));
    let fix = match suggest::closest(name, known) {
        Some(meant) => format!("did you mean `{meant}`?"),
        None => format!(
            "use a key of HitKeep's (see its hitkeep.example.yaml) or of ours: {}",
            ours.join(", ")
        ),
    };
    error(
        path,
        None,
        &format!("unknown key `{name}`: neither hitkeep nor the HitKeep server has this setting"),
        fix,
    )
}

fn error(path: &Path, key: Option<Key>, what: &str, fix: String) -> Problem {
    Problem {
        severity: Severity::Error,
        key,
        value: None,
        origin: Some(Origin::File(path.to_owned())),
        message: format!("config file {}: {what}", path.display()),
        fix,
    }
}

/// Nothing but blank lines, comments and document markers.
fn is_blank(text: &str) -> bool {
    text.lines()
        .map(str::trim)
        .all(|line| line.is_empty() || line.starts_with('#') || line == "---" || line == "...")
}

/// serde_yaml quotes a misplaced scalar in its errors (`invalid type: string "…"`), which may be a secret.
fn without_quotes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut quoted = false;
    for c in text.chars() {
        match (c, quoted) {
            ('"', false) => {
                out.push_str("\"…\"");
                quoted = true;
            }
            ('"', true) => quoted = false,
            (c, false) => out.push(c),
            (_, true) => {}
        }
    }
    out
}

/// The file's top-level entries in order. A map would keep only the last of two equal keys; HitKeep refuses
/// duplicates, so we keep them all to report them.
#[derive(Default)]
struct Entries(Vec<(Value, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(EntriesVisitor)
    }
}

struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Entries;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a mapping of settings at the top level, e.g. `s3-region: auto`")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
        let mut entries = Vec::new();
        while let Some(entry) = map.next_entry::<Value, Value>()? {
            entries.push(entry);
        }
        Ok(Entries(entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoted_text_is_dropped_from_parser_errors() {
        assert_eq!(
            without_quotes(r#"invalid type: string "wJalrXUtnFEMI", expected a map at line 1"#),
            r#"invalid type: string "…", expected a map at line 1"#
        );
    }

    #[test]
    fn yaml_by_extension() {
        assert!(is_yaml(Path::new("/etc/hitkeep.yaml")));
        assert!(is_yaml(Path::new("hitkeep.YML")));
        assert!(!is_yaml(Path::new("hitkeep.toml")));
        assert!(!is_yaml(Path::new("hitkeep")));
    }
}
