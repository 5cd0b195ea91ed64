//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `e2e`: the built `hitkeep` binary, driven as a black box, against a real S3 server process
//!   (MinIO when on PATH, an endpoint from `HITKEEP_E2E_S3_ENDPOINT`, else Garage installed from
//!   crates.io), through the guide's scenarios, faults and bad input.
//! - `bench`: not implemented yet; it says so and fails rather than pretending to pass.

use std::process::ExitCode;

mod e2e;

const USAGE: &str = "usage: cargo xtask <task>

tasks:
  e2e     the hitkeep binary against a real S3 server process: the guide's scenarios, faults
          (kill -9, a TCP fault proxy, a server restart, a flipped bit), 60+ bad inputs and a
          secret scan of everything hitkeep printed. Server: MinIO when `minio` is on PATH;
          HITKEEP_E2E_S3_ENDPOINT (+ _ACCESS_KEY_ID, _SECRET_ACCESS_KEY, _BUCKET, _REGION,
          _USE_SSL) when set; otherwise Garage, installed into $HITKEEP_CACHE/tools.
          Set HITKEEP_E2E_SEED to replay a run's random choices, HITKEEP_E2E_ONLY=word to
          run only the sections whose name holds it.
  bench   backup, restore and archive benchmarks (not implemented yet)";

fn main() -> ExitCode {
    match std::env::args().nth(1).as_deref() {
        Some("e2e") => match e2e::run() {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::FAILURE,
            Err(err) => {
                eprintln!("cargo xtask e2e: {err:#}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => {
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
