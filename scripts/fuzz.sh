#!/usr/bin/env bash
# Runs every cargo-fuzz target (fuzz/fuzz_targets/) for SECONDS each, one at
# a time, and prints per target: executions, time, and whether it found
# anything (a crash file in fuzz/artifacts/TARGET/).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     # default 60 s, every target
#
# Toolchain: cargo-fuzz needs a nightly compiler (-Z sanitizer flags). The
# script uses the nightly toolchain when rustup has one; otherwise it runs
# the stable one with RUSTC_BOOTSTRAP=1, which lets stable accept nightly
# flags (for a machine that cannot fetch one). cargo-fuzz is installed
# (`cargo install cargo-fuzz --locked`) when missing.
#
# Bounds every run is held to (libFuzzer stops with a crash file past them):
# -rss_limit_mb=2048 (the whole process), -malloc_limit_mb=64 (any single
# allocation), -timeout=10 (seconds for one input); inside the targets,
# decoding one datagram allocates at most 4 x 65,507 bytes, and a node
# handling one at most that plus 256 KiB (fuzz/src/).
#
# The seeds (fuzz/corpus/TARGET/seed-*, written by tests/fuzz_corpus.rs)
# are read, never written: what the fuzzer finds goes to fuzz/grown/TARGET
# (not in git), kept between runs so that each run goes on from the last.
# Exit status: 0 when nothing was found, 1 otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-60}"
shift || true
case "$seconds" in
  '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "== installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

if rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  toolchain=(+nightly)
  echo "== toolchain: nightly ($(rustc +nightly --version))"
else
  toolchain=()
  export RUSTC_BOOTSTRAP=1
  echo "== toolchain: no nightly installed: stable with RUSTC_BOOTSTRAP=1 ($(rustc --version))"
fi
export CARGO_INCREMENTAL=0

cd fuzz
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
fi

echo "== building ${targets[*]}"
nice -n 10 cargo "${toolchain[@]}" fuzz build

# What libFuzzer leaves for a finding, sorted.
artifacts() {
  find "artifacts/$1" -type f \( -name 'crash-*' -o -name 'oom-*' -o -name 'timeout-*' \
    -o -name 'leak-*' \) | sort
}

declare -A runs found took
status=0
for t in "${targets[@]}"; do
  case "$t" in
    node*) max_len=16384 ;;  # a sequence of datagrams
    *) max_len=4096 ;;
  esac
  mkdir -p "grown/$t" "corpus/$t" "artifacts/$t"
  log="artifacts/$t/last-run.log"
  before=$(artifacts "$t")
  echo "== $t: ${seconds} s"
  start=$(date +%s)
  rc=0
  nice -n 10 cargo "${toolchain[@]}" fuzz run "$t" "grown/$t" "corpus/$t" -- \
    -max_total_time="$seconds" -max_len="$max_len" -timeout=10 \
    -rss_limit_mb=2048 -malloc_limit_mb=64 -print_final_stats=1 \
    >"$log" 2>&1 || rc=$?
  took[$t]=$(($(date +%s) - start))
  runs[$t]=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  new=$(comm -13 <(echo "$before") <(artifacts "$t") | tr '\n' ' ')
  if [ "$rc" -ne 0 ] || [ -n "${new// /}" ]; then
    found[$t]="FOUND (exit $rc): ${new:-see fuzz/$log}"
    status=1
    grep -m5 -E 'panicked|ERROR: libFuzzer|SUMMARY' "$log" || true
  else
    found[$t]="nothing"
  fi
done

echo
printf '%-10s %15s %8s  %s\n' target executions seconds found
for t in "${targets[@]}"; do
  printf '%-10s %15s %8s  %s\n' "$t" "${runs[$t]:-?}" "${took[$t]}" "${found[$t]}"
done
exit "$status"
