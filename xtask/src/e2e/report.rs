//! What the run found: named checks grouped by section, and figures printed at the end.

use std::fmt::Display;

#[derive(Debug)]
struct Check {
    section: String,
    name: String,
    passed: bool,
    detail: String,
}

/// Checks are printed as they happen (a run takes minutes) and summed up at the end.
#[derive(Debug, Default)]
pub struct Report {
    section: String,
    checks: Vec<Check>,
    figures: Vec<(String, String)>,
}

impl Report {
    pub fn section(&mut self, name: &str) {
        println!("\n== {name}");
        self.section = name.to_owned();
    }

    /// Records a check and returns whether it passed, so callers can skip steps that depend on it.
    pub fn check(&mut self, name: impl Into<String>, passed: bool, detail: impl Display) -> bool {
        let name = name.into();
        let detail = detail.to_string();
        if passed {
            println!("  ok    {name}");
        } else {
            println!(
                "  FAIL  {name}\n        {}",
                detail.replace('\n', "\n        ")
            );
        }
        self.checks.push(Check {
            section: self.section.clone(),
            name,
            passed,
            detail,
        });
        passed
    }

    pub fn figure(&mut self, name: impl Into<String>, value: impl Display) {
        let (name, value) = (name.into(), value.to_string());
        println!("  --    {name}: {value}");
        self.figures.push((name, value));
    }

    pub fn failed(&self) -> usize {
        self.checks.iter().filter(|c| !c.passed).count()
    }

    /// The summary; its last line is the plain `N passed, N failed` that CI reads.
    pub fn print_summary(&self) {
        println!("\n== figures");
        for (name, value) in &self.figures {
            println!("  {name}: {value}");
        }
        let failed: Vec<&Check> = self.checks.iter().filter(|c| !c.passed).collect();
        if !failed.is_empty() {
            println!("\n== failures");
            for c in &failed {
                println!(
                    "  [{}] {}: {}",
                    c.section,
                    c.name,
                    c.detail.lines().next().unwrap_or("")
                );
            }
        }
        println!();
        println!(
            "e2e: {} passed, {} failed",
            self.checks.len() - failed.len(),
            failed.len()
        );
    }
}
