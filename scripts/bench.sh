#!/usr/bin/env bash
# Benchmarks. Performance targets live here, never in timed unit tests.
#
#   scripts/bench.sh            all benchmarks
#   scripts/bench.sh repair     NAK repair efficiency in the simulator
#                               (1,000 receivers, 1 % loss: <= 2 NAKs and
#                               <= 1.2 repairs per lost datagram)
#
# Extra arguments after the benchmark name go to it, e.g.
#   scripts/bench.sh repair --receivers 200 --loss 0.05 --json
set -euo pipefail
cd "$(dirname "$0")/.."

what="${1:-all}"
[ $# -gt 0 ] && shift

case "$what" in
  repair|all)
    cargo run --quiet --release --example repair_bench -- "$@"
    ;;
  -h|--help)
    sed -n '2,11p' "$0"
    ;;
  *)
    echo "unknown benchmark: $what (try: repair)" >&2
    exit 2
    ;;
esac
