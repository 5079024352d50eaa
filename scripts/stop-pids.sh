# shellcheck shell=bash
# Sourced by bench.sh and lan-sim.sh (not run on its own).
#
# stop_pids TRIES PID...: asks each process to stop (TERM), waits up to
# TRIES tenths of a second for all of them to go, kills what is left, and
# reaps those that are our children.
stop_pids() {
  local tries=$1 pid alive
  shift
  for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
  for _ in $(seq "$tries"); do
    alive=0
    for pid in "$@"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" -eq 0 ] && break
    sleep 0.1
  done
  for pid in "$@"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "$@"; do wait "$pid" 2>/dev/null || true; done
}
