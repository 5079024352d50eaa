#!/usr/bin/env bash
# The one test command: formatting, lints (warnings are errors), all tests.
# Loopback tests use interface 127.0.0.1, TTL 0 and groups in 239.255.0.0/16:
# nothing they send leaves this host.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy (warnings denied)"
cargo clippy --locked --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked
