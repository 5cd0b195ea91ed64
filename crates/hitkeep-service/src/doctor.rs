//! `doctor`: self-checks of the configured destinations and of the local data, run before trusting them.
//!
//! [`run`] returns a [`Report`] of [`Check`]s, each with an [`Outcome`], a one-line detail and, when
//! there is something to do, a hint. The destinations are exercised the way backups use them (open,
//! integrity headers, a round trip, the clock, conditional writes, a multipart upload, paging,
//! delete), writing only under `_doctor/{uuid}/` and removing it after. The local checks take every
//! path from the engine's [`DataLayout`](hitkeep_data::DataLayout) and only read: the databases are
//! opened read-only (or through the server that holds them, when embedded), and nothing is created.
//!
//! What this module will not do: print, choose an exit status, or read the process environment (the
//! caller says which AWS credential variables are set, [`CredentialHints`]).

mod destination;
mod local;

use hitkeep_config::{Credentials, Location};
use serde::Serialize;

use crate::engine::Engine;

/// How a check came out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    /// Nothing to do.
    Ok,
    /// Works, but something deserves a look (the hint says what).
    Warning,
    /// Backups or archives will fail, or are unsafe, until it is fixed.
    Failure,
}

/// One check: what was checked, how it came out, and what to do about it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// What was checked, e.g. `backup: multipart upload` or `data: in use`.
    pub name: String,
    /// How it came out (`status` in JSON, as `hitkeep doctor --json` has always printed it).
    #[serde(rename = "status")]
    pub outcome: Outcome,
    /// What was found, on one line.
    pub detail: String,
    /// What to do, when there is something to do.
    pub hint: Option<String>,
}

/// Every check of one [`run`], in the order they ran.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

impl Report {
    /// The worst outcome of any check; [`Outcome::Ok`] for none.
    pub fn outcome(&self) -> Outcome {
        self.checks
            .iter()
            .map(|c| c.outcome)
            .max()
            .unwrap_or(Outcome::Ok)
    }

    /// Whether any check failed. A warning is not a failure.
    pub fn failed(&self) -> bool {
        self.outcome() == Outcome::Failure
    }

    /// The check called `name`, if it ran.
    pub fn check(&self, name: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.name == name)
    }

    fn add(
        &mut self,
        name: impl Into<String>,
        outcome: Outcome,
        detail: impl Into<String>,
        hint: Option<String>,
    ) {
        self.checks.push(Check {
            name: name.into(),
            outcome,
            detail: detail.into(),
            hint,
        });
    }

    fn ok(&mut self, name: impl Into<String>, detail: impl Into<String>) {
        self.add(name, Outcome::Ok, detail, None);
    }

    /// A failed storage operation: its first line as the detail, its hint as the hint.
    fn fail(&mut self, name: impl Into<String>, e: &hitkeep_storage::Error) {
        self.add(
            name,
            Outcome::Failure,
            first_line(&e.to_string()),
            e.hint().map(str::to_owned),
        );
    }
}

/// Which of the AWS credential chain's sources are configured, so the `credentials` check can say
/// where the chain will find its keys (never what they are).
///
/// The chain itself reads `AWS_*` variables, but this library never reads the process environment on
/// its own: the caller decides what the check sees. The `hitkeep` binary fills it from its
/// environment with [`CredentialHints::from_vars`]; an embedding server may do the same, or leave it
/// at its default (nothing set), which the check reports as the instance role or `~/.aws`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CredentialHints {
    /// `AWS_ACCESS_KEY_ID` is set.
    pub access_key_id: bool,
    /// `AWS_WEB_IDENTITY_TOKEN_FILE` is set (e.g. EKS service accounts).
    pub web_identity: bool,
    /// `AWS_PROFILE` or `AWS_SHARED_CREDENTIALS_FILE` is set.
    pub profile: bool,
    /// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` is set (ECS task roles).
    pub container: bool,
}

impl CredentialHints {
    /// The hints from `is_set`, asked once for each variable named above: true when it is set and
    /// not empty. E.g. `CredentialHints::from_vars(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()))`.
    pub fn from_vars(is_set: impl Fn(&str) -> bool) -> Self {
        CredentialHints {
            access_key_id: is_set("AWS_ACCESS_KEY_ID"),
            web_identity: is_set("AWS_WEB_IDENTITY_TOKEN_FILE"),
            profile: is_set("AWS_PROFILE") || is_set("AWS_SHARED_CREDENTIALS_FILE"),
            container: is_set("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"),
        }
    }
}

/// Runs every check: the configuration (`config_warnings`: how many warnings loading it gave), the
/// backup and archive destinations, where S3 credentials come from (`credentials`, when a destination
/// is on S3), and the local data. Never fails: a failure is a [`Check`] with [`Outcome::Failure`].
pub async fn run(engine: &Engine, config_warnings: usize, credentials: CredentialHints) -> Report {
    let settings = engine.settings();
    let mut report = Report::default();
    config(config_warnings, &mut report);
    let mut destinations: Vec<(&str, &Location)> = Vec::new();
    match &settings.backup.location {
        Some(backup) => destinations.push(("backup", backup)),
        None => report.add(
            "backup",
            Outcome::Warning,
            "backups are disabled",
            Some("set HITKEEP_BACKUP_PATH".into()),
        ),
    }
    destinations.push(("archive", &settings.archive));
    if destinations.iter().any(|(_, l)| l.is_s3()) {
        report.ok(
            "credentials",
            credential_source(&settings.s3.credentials, credentials),
        );
    }
    for (label, location) in destinations {
        destination::check(settings, label, location, &mut report).await;
    }
    // File system calls and DuckDB opens: off the async workers.
    let layout = engine.layout().clone();
    match tokio::task::spawn_blocking(move || local::checks(&layout)).await {
        Ok(local) => report.checks.extend(local.checks),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        // The runtime is shutting down: nobody is waiting for the report.
        Err(_) => {}
    }
    report
}

fn config(warnings: usize, report: &mut Report) {
    match warnings {
        0 => report.ok("config", "valid"),
        n => report.add(
            "config",
            Outcome::Warning,
            format!("valid, with {n} warning(s)"),
            Some("run `hitkeep config check`".into()),
        ),
    }
}

/// Where the credentials come from, never what they are.
fn credential_source(credentials: &Credentials, hints: CredentialHints) -> &'static str {
    match credentials {
        Credentials::Static {
            session_token: Some(_),
            ..
        } => "static keys with a session token (HITKEEP_S3_*)",
        Credentials::Static { .. } => {
            "static keys (HITKEEP_S3_ACCESS_KEY_ID / HITKEEP_S3_SECRET_ACCESS_KEY)"
        }
        Credentials::Chain if hints.access_key_id => {
            "AWS credential chain: environment (AWS_ACCESS_KEY_ID)"
        }
        Credentials::Chain if hints.web_identity => "AWS credential chain: web identity",
        Credentials::Chain if hints.profile => "AWS credential chain: profile",
        Credentials::Chain if hints.container => "AWS credential chain: ECS task role",
        Credentials::Chain => {
            "AWS credential chain: instance role or ~/.aws (resolved on first request)"
        }
    }
}

/// An error's first line: a check's detail is one line, and a storage error's text may carry its hint
/// on the next.
fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_outcome_decides_and_only_a_failure_fails() {
        let mut report = Report::default();
        assert_eq!(report.outcome(), Outcome::Ok);
        report.ok("a", "fine");
        report.add("b", Outcome::Warning, "look", None);
        assert_eq!(report.outcome(), Outcome::Warning);
        assert!(!report.failed());
        report.add("c", Outcome::Failure, "broken", Some("fix it".into()));
        report.ok("d", "fine");
        assert_eq!(report.outcome(), Outcome::Failure);
        assert!(report.failed());
        assert_eq!(report.check("c").map(|c| c.outcome), Some(Outcome::Failure));
    }

    /// The JSON `hitkeep doctor --json` prints: `status`, lowercase, as before the checks moved here.
    #[test]
    fn a_check_serialises_as_doctor_json_always_has() {
        let check = Check {
            name: "backup: open".into(),
            outcome: Outcome::Warning,
            detail: "d".into(),
            hint: None,
        };
        assert_eq!(
            serde_json::to_value(&check).unwrap(),
            serde_json::json!({"name": "backup: open", "status": "warning", "detail": "d", "hint": null})
        );
    }

    #[test]
    fn the_credential_source_follows_the_hints_in_the_chains_order() {
        let chain = |hints| credential_source(&Credentials::Chain, hints);
        assert!(chain(CredentialHints::default()).contains("instance role"));
        let all = CredentialHints::from_vars(|_| true);
        assert!(
            chain(all).contains("AWS_ACCESS_KEY_ID"),
            "the environment comes first"
        );
        let profile = CredentialHints::from_vars(|k| k == "AWS_SHARED_CREDENTIALS_FILE");
        assert_eq!(chain(profile), "AWS credential chain: profile");
        let ecs = CredentialHints::from_vars(|k| k == "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI");
        assert_eq!(chain(ecs), "AWS credential chain: ECS task role");
    }
}
