# Shared by the scripts: one cache for builds and tools, outside the clone, so CI after a session is warm.
export HITKEEP_CACHE="${HITKEEP_CACHE:-$HOME/.cache/hitkeep}"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HITKEEP_CACHE/target}"
mkdir -p "$CARGO_TARGET_DIR"
if ! command -v cargo >/dev/null 2>&1; then
  echo "cargo not found: install Rust (https://rustup.rs), then run this again" >&2
  exit 2
fi
