#!/usr/bin/env bash
# Benchmarks. Performance targets live here, never in timed unit tests.
#
#   scripts/bench.sh [all]      repair (with its defaults), then speed
#   scripts/bench.sh repair     NAK repair efficiency in the simulator
#                               (1,000 receivers, 1 % loss: <= 2 NAKs and
#                               <= 1.2 repairs per lost datagram)
#   scripts/bench.sh speed      `cachecast-bench`: cachecast against raw UDP
#                               multicast on loopback (throughput, latency,
#                               rate sweep); Redis and NATS with --peers
#   scripts/bench.sh agent      `cachecast-bench agent`: the `cachecast agent`
#                               daemon over HTTP on 127.0.0.1 (publish
#                               throughput, POST on A -> SSE event and key
#                               gone from Redis on B, RSS and CPU); starts
#                               a redis-server for B like --peers (about
#                               a minute; not part of all)
#   scripts/bench.sh confirm    `cachecast-bench confirm`: confirmed publish on
#                               loopback, 1 publisher and 3 members:
#                               publish -> confirmed by every member p50/p99
#                               at 1,000/s and flat out, side by side with
#                               unconfirmed publish -> delivered (target:
#                               confirmed p99 <= 2 ms at 1,000/s; about 30 s;
#                               not part of all)
#
# Extra arguments after the benchmark name go to it (for all: to speed), e.g.
#   scripts/bench.sh repair --receivers 200 --loss 0.05 --json
#   scripts/bench.sh speed --mode throughput --events 300000 --plot sweep.svg
#   scripts/bench.sh speed --help           (every option of the bench)
#   scripts/bench.sh agent --duration 5s    (cachecast-bench agent --help)
#   scripts/bench.sh confirm --ack-delay 0  (cachecast-bench confirm --help)
#   scripts/bench.sh auth --subscribers 1   (cachecast-bench forged --help)
#   scripts/bench.sh auth       authenticated datagrams, in the same run as
#                               without keys: `cachecast-bench --auth
#                               --encrypt` (flat-out throughput and latency at
#                               10,000/s of cachecast, cachecast-auth and
#                               cachecast-encrypt, median of 3; targets:
#                               authenticated throughput >= 85 % of
#                               unauthenticated, p99 within +10 us), then
#                               `cachecast-bench forged` (a keyed listener
#                               receiving 100,000 forged datagrams/s: its CPU
#                               per forgery, every real event delivered, no
#                               Reset; median of 3); about a minute, not part
#                               of all. Extra arguments go to the first.
#   scripts/bench.sh unicast    the unicast transport's fan-out: for 3, 10 and
#                               30 subscribers, `cachecast-bench --unicast`
#                               runs cachecast over multicast and over
#                               unicast (the publisher sends a copy to each
#                               subscriber, each on its own port of
#                               127.0.0.1) in turns (median of 3): events/s
#                               per subscriber and the publisher's CPU per
#                               million events; a few minutes, not part of
#                               all. Extra arguments go to every run.
#   scripts/bench.sh unicast-lan  the same on a LAN of network namespaces
#                               (root; `ip`): host 1 publishes, 3, 10 and
#                               30 subscriber hosts, each its own
#                               namespace with a veth on one bridge
#                               (10.78.0.0/24, TTL 1); multicast and
#                               unicast in turns, median of 3; the
#                               namespaces are removed after. A few
#                               minutes, not part of all.
#   scripts/bench.sh reliable   cachecast beside the reliable-multicast
#                               references, ZeroMQ over OpenPGM (epgm://)
#                               and over NORM (norm://), on a LAN of network
#                               namespaces (root; `ip`, `nft`; 1 publisher
#                               and 3 subscriber hosts, 10.78.0.0/24):
#                               flat out 1 -> 3 and 1 -> 1 (messages/s per
#                               subscriber, CPU per million), then 5 % and
#                               30 % receive loss at one subscriber (an nft
#                               rule in its namespace): delivered fraction,
#                               whether the application is told, time to
#                               repair. The references run as
#                               bench/zmq_peer.py under /usr/bin/python3
#                               (python3-zmq is installed with apt-get when
#                               missing; without it cachecast runs alone).
#                               A few minutes, not part of all; --runs 3
#                               for medians (cachecast-bench reliable --help).
#   scripts/bench.sh bridge     two sites joined by two `cachecast bridge`
#                               processes through a nats-server with
#                               JetStream started here (127.0.0.1, a free
#                               port): publish in A -> delivered in B at
#                               1,000 events/s (p50/p99), then rising
#                               rates (5k .. 160k/s, 3 s each) up to the
#                               first not delivered whole (the bridges'
#                               limit); about a minute, not part of all.
#   scripts/bench.sh soak [MINUTES]  `cachecast-bench soak`: MINUTES (default
#                               30) at 50,000 events/s, 1 publisher -> 3
#                               subscriber processes (loopback multicast,
#                               TTL 0), and alongside, POST on a real
#                               `cachecast agent` A -> SSE on agent B at
#                               1,000/s; every minute the RSS and CPU of
#                               every process, delivered, lost, Resets by
#                               kind, p50/p99 of the interval. Prints the
#                               targets (RSS flat within 10 % after minute
#                               1, zero Resets, nothing lost; exit 1 if
#                               missed) and writes target/soak.svg and
#                               target/soak.csv (--plot, --csv to move
#                               them). Not part of all. E.g. a short one:
#                               scripts/bench.sh soak 3 --sample 20s
#   scripts/bench.sh confirm-sim  membership and confirmation in the simulator
#                               (1,000 receive-only members, 1 % loss:
#                               report background per node, confirmed
#                               publish latency, <= 1.1 acknowledgements per
#                               member per confirmation, ring under a burst
#                               with stability on and off; about 15 minutes,
#                               not part of all)
#   scripts/bench.sh confirm-sim --members 200 --confirmations 20 --burst 0
#
#   --peers   (speed, all) also compare with Redis pub/sub and NATS: start
#             redis-server and nats-server on 127.0.0.1 (free ports, no
#             persistence, slow-subscriber limits lifted), pass --redis /
#             --nats, stop them on exit. Missing servers are installed with
#             apt-get when running as root; a server that cannot be
#             installed or started is skipped, the rest still runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/stop-pids.sh
. scripts/stop-pids.sh

usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
say() { echo "bench.sh: $*" >&2; }

what=all
case "${1:-}" in
  repair|speed|agent|confirm|confirm-sim|auth|unicast|unicast-lan|reliable|bridge|soak|all) what="$1"; shift ;;
  -h|--help) usage; exit 0 ;;
  ""|-*) ;;   # options only: all
  *) say "unknown benchmark: $1 (try: repair, speed, agent, confirm, confirm-sim, auth, unicast, unicast-lan, reliable, bridge, soak, all)"; exit 2 ;;
esac

peers=0
args=()
for a in "$@"; do
  if [ "$a" = --peers ]; then peers=1; else args+=("$a"); fi
done
if [ "$peers" -eq 1 ] && { [ "$what" = repair ] || [ "$what" = agent ] || [ "$what" = confirm ] || [ "$what" = confirm-sim ] || [ "$what" = auth ] || [ "$what" = unicast ] || [ "$what" = unicast-lan ] || [ "$what" = reliable ] || [ "$what" = bridge ] || [ "$what" = soak ]; }; then
  say "--peers is for the speed benchmark (scripts/bench.sh speed --peers)"; exit 2
fi

# ------------------------------------------------------------------ peers
NSES=()   # network namespaces made here, removed on exit
PIDS=()   # servers started here, stopped by PID on exit
TMPS=()   # their temporary directories
BENCH=""  # the running benchmark
# shellcheck disable=SC2317  # invoked by the trap
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [ -n "$BENCH" ]; then   # interrupted: the benchmark first
    kill -TERM "$BENCH" 2>/dev/null || true
    wait "$BENCH" 2>/dev/null || true
  fi
  stop_pids 50 ${PIDS[@]+"${PIDS[@]}"}
  for d in "${TMPS[@]}"; do rm -rf "$d"; done
  local n pid
  for n in ${NSES[@]+"${NSES[@]}"}; do
    for pid in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
    ip netns del "$n" 2>/dev/null || true
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'say interrupted; exit 130' INT
trap 'say terminated; exit 143' TERM

# True if something listens on 127.0.0.1:$1 (or on every address).
port_busy() {
  if command -v ss >/dev/null; then
    [ -n "$(ss -Hltn "sport = :$1" 2>/dev/null)" ]
  else
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
  fi
}

# A TCP port nobody listens on (random in 20000..59999, 100 tries).
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 40000))
    port_busy "$p" || { echo "$p"; return 0; }
  done
  return 1
}

# Installs the package $2 unless the command $1 exists; false if it cannot.
ensure() {
  command -v "$1" >/dev/null && return 0
  if [ "$(id -u)" -ne 0 ] || ! command -v apt-get >/dev/null; then
    say "$1 not found and cannot be installed here (needs root and apt-get): the bench runs without it"
    return 1
  fi
  say "installing $2 with apt-get"
  if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2; then
    DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q "$2" >&2 || true
  fi
  command -v "$1" >/dev/null && return 0
  say "could not install $2: the bench runs without $1"
  return 1
}

# Waits (10 s at most) until probe "$@" succeeds while PID $1 lives.
await() {
  local pid=$1; shift
  for _ in $(seq 100); do
    kill -0 "$pid" 2>/dev/null || return 1
    "$@" && return 0
    sleep 0.1
  done
  return 1
}

redis_up() {
  if command -v redis-cli >/dev/null; then
    [ "$(timeout 2 redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]
  else
    # shellcheck disable=SC2016  # $1 of the inner shell
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null
  fi
}

# A NATS server greets with INFO.
nats_up() {
  local greeting
  # shellcheck disable=SC2016  # $1 of the inner shell
  greeting="$(timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"; head -c 4 <&3' _ "$1" 2>/dev/null)" || return 1
  [ "$greeting" = INFO ]
}

# Says why server $1 (PID $2, port $3) is not used.
not_up() {
  if kill -0 "$2" 2>/dev/null; then
    say "$1 did not answer on 127.0.0.1:$3 within 10 s: the bench runs without it"
  else
    say "$1 exited at start (port 127.0.0.1:$3): the bench runs without it"
  fi
}

# Prints the last lines of $1 indented, to standard error.
tail_log() { if [ -f "$1" ]; then tail -n 5 "$1" | sed 's/^/    /' >&2; fi; }

# Server $1 (version $2) was started as pid $3 on 127.0.0.1:$4. If it
# answers (check $5) within 10 s, the bench gets option $6 for it; if not,
# say why, show the logs given after, and stop it.
adopt() {
  local name=$1 version=$2 pid=$3 port=$4 check=$5 opt=$6 log
  shift 6
  if await "$pid" "$check" "$port"; then
    say "$name $version on 127.0.0.1:$port (pid $pid)"
    args=("$opt" "127.0.0.1:$port" ${args[@]+"${args[@]}"})
  else
    not_up "$name" "$pid" "$port"
    for log in "$@"; do tail_log "$log"; done
    kill -TERM "$pid" 2>/dev/null || true
  fi
}

start_redis() {
  ensure redis-server redis-server || return 0
  local dir port pid
  dir="$(mktemp -d "${TMPDIR:-/tmp}/bench-redis.XXXXXX")"; TMPS+=("$dir")
  port="$(free_port)" || { say "no free port for redis: skipping it"; return 0; }
  # Slow subscribers are never disconnected (pubsub 0 0 0), nothing is
  # written to disk: the bench measures pub/sub throughput.
  redis-server --bind 127.0.0.1 --port "$port" --protected-mode yes \
    --save "" --appendonly no --client-output-buffer-limit "pubsub 0 0 0" \
    --dir "$dir" --logfile "$dir/redis.log" --daemonize no </dev/null >"$dir/out" 2>&1 &
  pid=$!; PIDS+=("$pid")
  adopt redis-server "$(redis-server --version | sed -n 's/.*v=\([^ ]*\).*/\1/p')" \
    "$pid" "$port" redis_up --redis "$dir/out" "$dir/redis.log"
}

start_nats() {
  ensure nats-server nats-server || return 0
  local dir port pid
  dir="$(mktemp -d "${TMPDIR:-/tmp}/bench-nats.XXXXXX")"; TMPS+=("$dir")
  port="$(free_port)" || { say "no free port for nats: skipping it"; return 0; }
  # A slow consumer is one with more than max_pending bytes queued, or a
  # write blocked past write_deadline: raised so that flat out measures
  # throughput rather than disconnects.
  cat >"$dir/nats.conf" <<EOF
listen: "127.0.0.1:$port"
max_pending: 1073741824
write_deadline: "60s"
EOF
  # The bridge needs JetStream (a store of this run's own).
  if [ "${NATS_JS:-0}" = 1 ]; then
    printf 'jetstream { store_dir: "%s" }\n' "$dir/js" >>"$dir/nats.conf"
  fi
  nats-server -c "$dir/nats.conf" -l "$dir/nats.log" </dev/null >"$dir/out" 2>&1 &
  pid=$!; PIDS+=("$pid")
  adopt nats-server "$(nats-server --version | sed 's/.*v//')" \
    "$pid" "$port" nats_up --nats "$dir/out" "$dir/nats.log"
}

# ------------------------------------------------------------- benchmarks
# Runs "$@" in the background and waits, so that a signal reaches the trap
# at once (which then stops it) rather than after the benchmark.
run() {
  local rc=0
  "$@" &
  BENCH=$!
  wait "$BENCH" || rc=$?
  BENCH=""
  return "$rc"
}
repair() { run cargo run --quiet --release -p cachecast-bench --example repair_bench -- "$@"; }
speed() {
  if [ "$peers" -eq 1 ]; then start_redis; start_nats; fi
  run cargo run --quiet --release -p cachecast-bench -- ${args[@]+"${args[@]}"}
}

# The agent benchmark runs the real `cachecast` binary, found next to
# cachecast-bench in target/release; B's Redis applier gets a server of its own.
agent() {
  cargo build --quiet --release -p cachecast-cli -p cachecast-bench
  start_redis
  run "${CARGO_TARGET_DIR:-target}/release/cachecast-bench" agent ${args[@]+"${args[@]}"}
}

# Two sites joined by two real `cachecast bridge` processes through a
# nats-server with JetStream: latency at 1,000 events/s and the limit.
bridge() {
  cargo build --quiet --release -p cachecast-cli -p cachecast-bench
  NATS_JS=1 start_nats
  case " ${args[*]-} " in
    *" --nats "*) run "${CARGO_TARGET_DIR:-target}/release/cachecast-bench" bridge ${args[@]+"${args[@]}"} ;;
    *) say "no nats-server: the bridge benchmark needs one"; return 1 ;;
  esac
}

# Confirmed publish: nodes in the bench's own process, on loopback.
confirm() { run cargo run --quiet --release -p cachecast-bench -- confirm ${args[@]+"${args[@]}"}; }

# Keys: keyed and unkeyed cachecast side by side, then forged datagrams.
auth() {
  cargo build --quiet --release -p cachecast-bench
  local bin="${CARGO_TARGET_DIR:-target}/release/cachecast-bench"
  run "$bin" --auth --encrypt --systems cachecast --mode throughput,latency \
    --runs 3 ${args[@]+"${args[@]}"}
  run "$bin" forged --runs 3
}

# Membership and confirmation at scale, in the simulator.
confirm_sim() { run cargo run --quiet --release -p cachecast-bench --example confirm_bench -- "$@"; }

# Unicast fan-out against multicast, same run, 3 / 10 / 30 subscribers.
unicast() {
  cargo build --quiet --release -p cachecast-bench
  local bin="${CARGO_TARGET_DIR:-target}/release/cachecast-bench" n events
  for n in 3 10 30; do
    events=1000000; [ "$n" -lt 30 ] || events=300000
    run "$bin" --unicast --systems cachecast --mode throughput --runs 3 \
      --subscribers "$n" --events "$events" ${args[@]+"${args[@]}"}
  done
}

# A LAN of $2 hosts, namespaces $1-h1 .. $1-hN (10.78.0.H/24 on cc0) and
# their bridge $1-br (no multicast snooping: multicast floods); nothing is
# added to this host's own namespace.
make_lan() {
  local pfx=$1 hosts=$2 h n
  NSES+=("$pfx-br"); ip netns add "$pfx-br"
  ip -n "$pfx-br" link set lo up
  ip -n "$pfx-br" link add br0 type bridge stp_state 0 mcast_snooping 0
  ip -n "$pfx-br" link set br0 up
  for h in $(seq 1 "$hosts"); do
    n="$pfx-h$h"
    NSES=("$n" "${NSES[@]}"); ip netns add "$n"
    ip -n "$n" link set lo up
    ip -n "$pfx-br" link add "p$h" type veth peer name cc0 netns "$n"
    ip -n "$pfx-br" link set "p$h" master br0
    ip -n "$pfx-br" link set "p$h" up
    ip -n "$n" addr add "10.78.0.$h/24" dev cc0
    ip -n "$n" link set cc0 up
    ip -n "$n" route add 224.0.0.0/4 dev cc0
  done
  local deadline=$((SECONDS + 20))
  for h in $(seq 1 "$hosts"); do
    until ip -n "$pfx-h$h" link show cc0 | grep -q 'state UP'; do
      [ $SECONDS -lt $deadline ] || { say "cc0 in $pfx-h$h did not come up"; return 1; }
      sleep 0.05
    done
  done
}

# Unicast fan-out against multicast on a namespace LAN.
unicast_lan() {
  [ "$(id -u)" -eq 0 ] || { say "unicast-lan needs root (network namespaces)"; return 2; }
  command -v ip >/dev/null || { say "unicast-lan needs ip (iproute2)"; return 2; }
  cargo build --quiet --release -p cachecast-bench
  local bin pfx="ccb$$" n events
  bin="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/cachecast-bench"
  make_lan "$pfx" 31
  for n in 3 10 30; do
    events=1000000; [ "$n" -lt 30 ] || events=300000
    run ip netns exec "$pfx-h1" "$bin" --lan "$pfx" --unicast --systems cachecast \
      --mode throughput --runs 3 --subscribers "$n" --events "$events" ${args[@]+"${args[@]}"}
  done
}

# The references' Python: the distribution's, with python3-zmq.
PY=/usr/bin/python3
py_zmq() { [ -x "$PY" ] && "$PY" -c 'import zmq' 2>/dev/null; }

# cachecast beside ZeroMQ over OpenPGM and NORM on a namespace LAN.
reliable() {
  [ "$(id -u)" -eq 0 ] || { say "reliable needs root (network namespaces, nft)"; return 2; }
  command -v ip >/dev/null || { say "reliable needs ip (iproute2)"; return 2; }
  ensure nft nftables || { say "reliable needs nft for its loss runs"; return 2; }
  local peer_opt=()
  if ! py_zmq; then
    if command -v apt-get >/dev/null; then
      say "installing python3-zmq with apt-get"
      DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-zmq >&2 || {
        DEBIAN_FRONTEND=noninteractive apt-get update -q >&2 || true
        DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-zmq >&2 || true
      }
    fi
    py_zmq || { say "no python3-zmq for $PY: OpenPGM and NORM are skipped, cachecast runs alone"; peer_opt=(--no-peers); }
  fi
  cargo build --quiet --release -p cachecast-bench
  local bin pfx="ccr$$"
  bin="$(cd "${CARGO_TARGET_DIR:-target}/release" && pwd)/cachecast-bench"
  make_lan "$pfx" 4
  run ip netns exec "$pfx-h1" "$bin" reliable --lan "$pfx" --python "$PY" \
    --peer-script "$PWD/bench/zmq_peer.py" ${peer_opt[@]+"${peer_opt[@]}"} ${args[@]+"${args[@]}"}
}

# The soak: MINUTES first (if given), then options for cachecast-bench soak.
soak() {
  local dir="${CARGO_TARGET_DIR:-target}" out=()
  if [ "${#args[@]}" -gt 0 ] && [[ "${args[0]}" =~ ^[0-9]+([.][0-9]+)?$ ]]; then
    out=(--minutes "${args[0]}"); args=("${args[@]:1}")
  fi
  case " ${args[*]-} " in *" --plot "*) ;; *) out+=(--plot "$dir/soak.svg") ;; esac
  case " ${args[*]-} " in *" --csv "*) ;; *) out+=(--csv "$dir/soak.csv") ;; esac
  cargo build --quiet --release -p cachecast-cli -p cachecast-bench
  run "$dir/release/cachecast-bench" soak "${out[@]}" ${args[@]+"${args[@]}"}
}

case "$what" in
  repair) repair ${args[@]+"${args[@]}"} ;;
  speed) speed ;;
  agent) agent ;;
  confirm) confirm ;;
  confirm-sim) confirm_sim ${args[@]+"${args[@]}"} ;;
  auth) auth ;;
  unicast) unicast ;;
  unicast-lan) unicast_lan ;;
  reliable) reliable ;;
  bridge) bridge ;;
  soak) soak ;;
  all) repair; speed ;;
esac
