//! What the run found: named checks grouped by section, and figures printed at the end.

use std::fmt::Display;

#[derive(Debug)]
struct Check {
    section: String,
    name: String,
    passed: bool,
    detail: String,
}

/// Checks are printed as they happen (a run takes minutes) and summed up at the end; a report of
/// sections that run beside others keeps its lines until [`Report::absorb`] prints them, so the
/// two never interleave.
#[derive(Debug, Default)]
pub struct Report {
    section: String,
    checks: Vec<Check>,
    figures: Vec<(String, String)>,
    /// `Some` while the lines are kept, not printed.
    kept: Option<Vec<String>>,
}

impl Report {
    /// A report that keeps its lines until another absorbs it.
    pub fn kept() -> Report {
        Report {
            kept: Some(Vec::new()),
            ..Report::default()
        }
    }

    fn say(&mut self, line: String) {
        match &mut self.kept {
            Some(lines) => lines.push(line),
            None => println!("{line}"),
        }
    }

    /// Takes in `other`'s checks and figures, after this report's, and says its lines.
    pub fn absorb(&mut self, other: Report) {
        for line in other.kept.into_iter().flatten() {
            self.say(line);
        }
        self.checks.extend(other.checks);
        self.figures.extend(other.figures);
    }

    pub fn section(&mut self, name: &str) {
        if self.kept.is_some() {
            // One line as it starts, so that a section that hangs is seen to be running.
            eprintln!("e2e: second lane: {name}");
        }
        self.say(format!("\n== {name}"));
        self.section = name.to_owned();
    }

    /// Records a check and returns whether it passed, so callers can skip steps that depend on it.
    pub fn check(&mut self, name: impl Into<String>, passed: bool, detail: impl Display) -> bool {
        let name = name.into();
        let detail = detail.to_string();
        if passed {
            self.say(format!("  ok    {name}"));
        } else {
            self.say(format!(
                "  FAIL  {name}\n        {}",
                detail.replace('\n', "\n        ")
            ));
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
        self.say(format!("  --    {name}: {value}"));
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
