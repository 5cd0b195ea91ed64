# Shared by the scripts: one cache for builds and tools, outside the clone, so CI after a session is warm.
export HITKEEP_CACHE="${HITKEEP_CACHE:-$HOME/.cache/hitkeep}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HITKEEP_CACHE/target}"
mkdir -p "$CARGO_TARGET_DIR"
# Snapshot tests find their .snap files from this clone, not from the path baked into a test binary that
# another clone sharing the cache built (cargo may count it fresh here, and insta then looks there).
export INSTA_WORKSPACE_ROOT="${INSTA_WORKSPACE_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}"
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs), then run this again" >&2
  exit 2
fi
