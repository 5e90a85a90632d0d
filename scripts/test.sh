#!/usr/bin/env bash
# The whole test suite: install what it needs, check formatting and lints,
# run every test. This is exactly what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo test --workspace
# Nothing may be left mounted by the tests.
if grep -E 'umd-test|export-test' /proc/mounts >&2; then
    echo "test.sh: a test left the FUSE mount(s) above behind" >&2
    exit 1
fi
