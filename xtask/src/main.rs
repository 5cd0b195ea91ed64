//! `cargo xtask`: the project's automation, in Rust so it runs wherever cargo does.
//!
//! - `e2e`: the built `hitkeep` binary, driven as a black box, against a real S3 server process
//!   (MinIO when on PATH, an endpoint from `HITKEEP_E2E_S3_ENDPOINT`, else Garage installed from
//!   crates.io), through the guide's scenarios, faults and bad input.
//! - `bench`: backup, restore and archive timed against bare baselines (local EXPORT, rclone, IMPORT,
//!   COPY + DELETE) on the same server, written to `bench/results/latest.md` and `latest.png`.

use std::process::ExitCode;

mod bench;
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
  tools   installs what `e2e` would install on first use (Garage) and exits.
  bench   backup, restore and archive against bare baselines in the same run (local EXPORT,
          rclone upload and download, IMPORT, COPY + DELETE), tenants one at a time and at
          once, and LIST requests with 1,000 snapshots; writes bench/results/latest.md and
          latest.png. HITKEEP_BENCH_SIZES (1000000,4000000,16000000), HITKEEP_BENCH_TENANTS
          (10,50,200), HITKEEP_BENCH_RUNS (3), HITKEEP_BENCH_MEMORY_LIMIT_MIB (1024).
          The online panel (ingest in hitkeep-service's example embedded_server, with and
          without backups; needs `cargo build --workspace --all-targets`):
          HITKEEP_BENCH_ONLINE_HITS (1000000), HITKEEP_BENCH_ONLINE_SECS (60);
          HITKEEP_BENCH_PANELS=online runs it alone and merges it into latest.md.";

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
        Some("tools") => match e2e::install_tools() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("cargo xtask tools: {err:#}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => match bench::run() {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("cargo xtask bench: {err:#}");
                ExitCode::FAILURE
            }
        },
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

/// The clone this xtask runs from. `cargo run` sets `CARGO_MANIFEST_DIR` for the process, and that is
/// read first: the build-time value is where the binary was compiled, and a target directory shared
/// between clones (CI's and a developer's, in `~/.cache/hitkeep`) can hand one clone's xtask to another.
/// Either counts only when it is this workspace's `xtask` folder.
fn workspace_root() -> anyhow::Result<std::path::PathBuf> {
    let at_run_time = std::env::var_os("CARGO_MANIFEST_DIR").map(std::path::PathBuf::from);
    let at_build_time = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    at_run_time
        .into_iter()
        .chain([at_build_time])
        .filter_map(|xtask| xtask.parent().map(std::path::Path::to_path_buf))
        .find(|root| root.join("xtask/Cargo.toml").is_file())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "cannot find the workspace: run this through `cargo xtask` from the clone"
            )
        })
}
