//! `hitkeep config show`: the effective settings and where each came from.

use serde_json::json;

use crate::Config;
use crate::key::Key;

impl Config {
    /// One line per setting: `HITKEEP_S3_REGION = eu-central-1  (env HITKEEP_S3_REGION)`. Secrets are masked.
    pub fn render_text(&self) -> String {
        let width = Key::ALL.iter().map(|k| k.env().len()).max().unwrap_or(0);
        let mut out = String::new();
        if let Some(path) = &self.config_file {
            out.push_str(&format!("# config file: {}\n", path.display()));
        }
        for &key in Key::ALL {
            let value = self
                .display_value(key)
                .unwrap_or_else(|| "(unset)".to_owned());
            let origin = self.origin(key).describe(key);
            out.push_str(&format!("{:width$} = {value}  ({origin})\n", key.env()));
        }
        out
    }

    /// The same as JSON: `{"settings": [{"key", "env", "flag", "value", "origin"}], "warnings": [...]}`.
    pub fn render_json(&self) -> serde_json::Value {
        let settings: Vec<_> = Key::ALL
            .iter()
            .map(|&key| {
                json!({
                    "key": key.field(),
                    "env": key.env(),
                    "flag": format!("--{}", key.flag()),
                    "value": self.display_value(key),
                    "origin": self.origin(key),
                })
            })
            .collect();
        json!({ "config_file": self.config_file, "settings": settings, "warnings": self.warnings })
    }
}
