//! `hitkeep doctor`: runs the service's self-checks ([`hitkeep_service::doctor`]) and prints them.

use std::process::ExitCode;

use hitkeep_config::{Config, Settings};
use hitkeep_service::Engine;
use hitkeep_service::doctor::{CredentialHints, Outcome, Report};

/// Prints every check (text, or JSON with `--json`). Exits 1 when a check failed, 0 otherwise, warnings
/// included: 2 is for usage and configuration errors, which never get this far.
pub fn doctor(settings: &Settings, config: &Config, json: bool) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime starts");
    let engine = Engine::new(settings.clone());
    // Only this binary reads the environment: the service is told which AWS variables are set.
    let credentials =
        CredentialHints::from_vars(|k| std::env::var_os(k).is_some_and(|v| !v.is_empty()));
    let report = runtime.block_on(hitkeep_service::doctor::run(
        &engine,
        config.warnings.len(),
        credentials,
    ));
    print(&report, json);
    if report.failed() {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn print(report: &Report, json: bool) {
    if json {
        println!(
            "{:#}",
            serde_json::json!({ "status": report.outcome(), "checks": report.checks })
        );
        return;
    }
    for c in &report.checks {
        let label = match c.outcome {
            Outcome::Ok => "ok     ",
            Outcome::Warning => "warning",
            Outcome::Failure => "FAILURE",
        };
        println!("{label} {}: {}", c.name, c.detail);
        if let Some(hint) = &c.hint {
            println!("        hint: {hint}");
        }
    }
}
