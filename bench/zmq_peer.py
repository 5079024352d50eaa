#!/usr/bin/python3
"""One publisher or subscriber of the reliable-multicast references, for
`cachecast-bench reliable`: ZeroMQ PUB/SUB over OpenPGM (`epgm://`, RFC
3208, UDP-encapsulated) or NORM (`norm://`, RFC 5740), through the system
libzmq (Debian's libzmq5 4.3.4 has both) and python3-zmq.

Run it with /usr/bin/python3 (the distribution's, which has zmq). Every
message is one event of 32 ASCII bytes: 16 hex digits of the publisher's
CLOCK_MONOTONIC nanoseconds (the bench's `stamp`, shared by every process
of the host, namespaces included), then 16 hex digits of the event's
sequence number, so that a subscriber measures publish -> delivery latency
and can see for itself what it never received (ZeroMQ does not tell it).

Protocol with the parent, one line each on standard output:
  subscriber: READY, then REPORT {json} when done;
  publisher:  PUBLISHED {json} once everything was handed to ZeroMQ, then
              REPORT {json} once the parent closes our standard input (the
              publisher stays up meanwhile to answer NAKs).
Closing standard input also tells a subscriber to stop. Every loop is
bounded by --max-time.
"""

import argparse
import array
import json
import os
import resource
import sys
import threading
import time

try:
    import zmq
except ImportError as e:  # the parent reports this line as the reason
    print("REPORT " + json.dumps({"error": "python3-zmq is missing: %s" % e}), flush=True)
    sys.exit(0)

MSG_LEN = 32


def endpoint(a):
    """The ZeroMQ endpoint: interface (address for PGM, name for NORM),
    group and port."""
    if a.transport == "epgm":
        return "epgm://%s;%s:%d" % (a.iface, a.group, a.port)
    return "norm://%s;%s:%d" % (a.iface, a.group, a.port)


def cpu():
    """CPU seconds of the whole process (ZeroMQ's I/O thread included)."""
    return time.process_time()


def peak_rss_kib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def watch_stdin(stop):
    """Sets `stop` once standard input ends (the parent closed it or died)."""

    def run():
        try:
            while sys.stdin.readline():
                pass
        except (OSError, ValueError):
            pass
        stop.set()

    threading.Thread(target=run, daemon=True).start()


def say(word, obj=None):
    line = word if obj is None else word + " " + json.dumps(obj)
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        pass


def options(sock, a):
    # kbit/s: the PGM sender's rate limit (libzmq's default is 100).
    sock.setsockopt(zmq.RATE, a.zmq_rate)
    # ms: how far back the PGM sender can repair.
    sock.setsockopt(zmq.RECOVERY_IVL, a.recovery_ivl)


def publish(a):
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.PUB)
    # A PUB socket drops messages past its high-water mark, silently:
    # unlimited, so that everything published is handed to the transport.
    sock.setsockopt(zmq.SNDHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SNDBUF, 32 << 20)
    options(sock, a)
    sock.connect(endpoint(a))
    stop = threading.Event()
    watch_stdin(stop)
    interval = 1.0 / a.rate if a.rate else 0.0
    deadline = time.monotonic() + a.max_time
    cpu0 = cpu()
    start_ns = time.monotonic_ns()
    sent = 0
    mono = time.monotonic_ns
    send = sock.send
    while sent < a.events:
        if interval:
            due = start_ns + int(sent * interval * 1e9)
            now = mono()
            if due > now:
                time.sleep((due - now) / 1e9)
        send(b"%016x%016x" % (mono(), sent))
        sent += 1
        if sent & 0x3FFF == 0 and time.monotonic() > deadline:
            break
    end_ns = time.monotonic_ns()
    say("PUBLISHED", {"published": sent, "start_ns": start_ns, "end_ns": end_ns})
    # Stay up (answering NAKs, sending what is queued) until released.
    stop.wait(timeout=max(1.0, deadline + a.max_time - time.monotonic()))
    say(
        "REPORT",
        {
            "published": sent,
            "start_ns": start_ns,
            "end_ns": end_ns,
            "cpu_s": cpu() - cpu0,
            "rss_kib": peak_rss_kib(),
        },
    )
    sock.close(0)
    ctx.term()


def quantile(sorted_vals, q):
    if not sorted_vals:
        return 0
    i = min(len(sorted_vals) - 1, max(0, int(q * len(sorted_vals) + 0.5) - 1))
    return sorted_vals[i]


def subscribe(a):
    ctx = zmq.Context(io_threads=1)
    sock = ctx.socket(zmq.SUB)
    # A SUB socket drops past its high-water mark, silently: unlimited.
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVBUF, 32 << 20)
    options(sock, a)
    sock.setsockopt(zmq.SUBSCRIBE, b"")
    sock.connect(endpoint(a))
    stop = threading.Event()
    watch_stdin(stop)
    # The transport's receiver is made on ZeroMQ's I/O thread after
    # connect returns, and nothing says when it has joined the group.
    time.sleep(a.settle)
    say("READY")
    lat = array.array("q")
    received = 0
    gaps = 0  # sequence numbers skipped, as this subscriber sees it
    bad = 0
    next_seq = 0
    first_ns = last_ns = 0
    errors = []
    cpu0 = cpu()
    deadline = time.monotonic() + a.max_time
    idle_ns = int(a.idle * 1e9)
    recv = sock.recv
    mono = time.monotonic_ns
    poller = zmq.Poller()
    poller.register(sock, zmq.POLLIN)
    while received < a.expect and not stop.is_set() and time.monotonic() < deadline:
        if last_ns and mono() - last_ns > idle_ns:
            break
        if not poller.poll(50):
            continue
        while received < a.expect:
            try:
                m = recv(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as e:
                errors.append(str(e))
                break
            now = mono()
            if len(m) != MSG_LEN:
                bad += 1
                continue
            try:
                ts = int(m[:16], 16)
                seq = int(m[16:], 16)
            except ValueError:
                bad += 1
                continue
            received += 1
            if not first_ns:
                first_ns = now
            last_ns = now
            if len(lat) < a.expect:
                lat.append(now - ts)
            if seq > next_seq:
                gaps += seq - next_seq
            if seq >= next_seq:
                next_seq = seq + 1
    cpu_s = cpu() - cpu0
    vals = sorted(lat)
    say(
        "REPORT",
        {
            "received": received,
            "first_ns": first_ns,
            "last_ns": last_ns,
            "p50_ns": quantile(vals, 0.5),
            "p99_ns": quantile(vals, 0.99),
            "p999_ns": quantile(vals, 0.999),
            "max_ns": vals[-1] if vals else 0,
            "cpu_s": cpu_s,
            "rss_kib": peak_rss_kib(),
            "seq_gaps": gaps,
            "malformed": bad,
            "zmq_errors": len(errors),
            "error": errors[0] if errors else None,
        },
    )
    sock.close(0)
    ctx.term()


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("role", choices=["pub", "sub"])
    p.add_argument("--transport", choices=["epgm", "norm"], required=True)
    p.add_argument("--iface", required=True, help="PGM: interface address; NORM: interface name")
    p.add_argument("--group", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--events", type=int, default=100000)
    p.add_argument("--expect", type=int, default=100000)
    p.add_argument("--rate", type=float, default=0.0, help="events/s; 0 = flat out")
    p.add_argument("--zmq-rate", type=int, default=1000000, help="ZMQ_RATE, kbit/s")
    p.add_argument("--recovery-ivl", type=int, default=10000, help="ZMQ_RECOVERY_IVL, ms")
    p.add_argument("--idle", type=float, default=2.0, help="s without a message after the first")
    p.add_argument("--settle", type=float, default=0.3)
    p.add_argument("--max-time", type=float, default=30.0)
    a = p.parse_args()
    if not a.group.startswith("239.255."):
        p.error("--group must be in 239.255.0.0/16")
    a.events = max(0, min(a.events, 50_000_000))
    a.expect = max(1, min(a.expect, 50_000_000))
    try:
        if a.role == "pub":
            publish(a)
        else:
            subscribe(a)
    except zmq.ZMQError as e:
        say("REPORT", {"error": "zmq: %s (%s)" % (e, endpoint(a))})
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
