//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! Tasks land with their issues: `e2e` (the binary against a real S3 server process) and `bench`.
//! Until then they say so and fail, rather than pretending to pass.

use std::process::ExitCode;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  e2e     the hitkeep binary against a real S3 server process (not implemented yet)
  bench   backup, restore and archive benchmarks (not implemented yet)";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("e2e" | "bench") => {
            eprintln!("cargo xtask: this task is not implemented yet\n\n{USAGE}");
            ExitCode::from(2)
        }
        Some("-h" | "--help") => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(2)
        }
    }
}
