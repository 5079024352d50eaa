#!/usr/bin/env python3
"""A Python application's in-process cache kept coherent by the local
cachecast agent, with the standard library only.

The agent streams every invalidation as a Server-Sent Event
(GET /v1/events). This program keeps a dict cache and applies them:
`invalidate` removes keys, `prefix` removes keys starting with it, `clear`
and `reset` remove everything (a `reset` means "something may have been
missed": the only safe answer is to drop the whole cache). When the
connection drops, or the agent says `shutdown`, it reconnects with the
Last-Event-ID of the last event it applied: the agent sends exactly what
was missed, or a `reset` first when it cannot (it restarted, or the
cursor is too old).

    # consume (Ctrl-C to stop)
    python3 consumer.py --agent http://127.0.0.1:7468 --print
    # publish (from any process on the host)
    python3 consumer.py --agent http://127.0.0.1:7468 --publish user:42
    python3 consumer.py --publish-prefix 'page:/shop/'
    python3 consumer.py --publish-all
    python3 consumer.py --publish-topic deploy --payload v2

In an application, use `Cache`, `follow()` (in a daemon thread) and
`publish()` directly.
"""

import argparse
import base64
import http.client
import json
import os
import random
import signal
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

# Longest SSE line accepted: what the agent sends is far smaller, and a
# stream is hostile input like any other.
MAX_LINE = 1 << 20


class Cache:
    """A small thread-safe dict cache."""

    def __init__(self):
        self._d = {}
        self._lock = threading.Lock()

    def get(self, key, load):
        """The cached value of `key`, loaded with `load(key)` on a miss."""
        with self._lock:
            if key in self._d:
                return self._d[key]
        value = load(key)
        with self._lock:
            self._d[key] = value
        return value

    def set(self, key, value):
        with self._lock:
            self._d[key] = value

    def remove(self, keys):
        """Removes these keys; returns how many were there."""
        with self._lock:
            return sum(self._d.pop(k, None) is not None for k in keys)

    def remove_prefix(self, prefix):
        with self._lock:
            gone = [k for k in self._d if k.startswith(prefix)]
            for k in gone:
                del self._d[k]
            return len(gone)

    def clear(self):
        with self._lock:
            n = len(self._d)
            self._d.clear()
            return n

    def __len__(self):
        with self._lock:
            return len(self._d)


class Event:
    """One dispatched SSE event."""

    def __init__(self, type_, data, last_event_id):
        self.type = type_
        self.data = data
        # The stream's last event ID when this event was dispatched (the
        # cursor to resume after it).
        self.last_event_id = last_event_id


class SseParser:
    """An incremental text/event-stream parser (WHATWG HTML, "Server-sent
    events", section "Interpreting an event stream"): lines end with CRLF,
    LF or CR; `:` starts a comment; `data` lines join with LF; `id`
    sets the last event ID (unless it contains NUL); `retry` sets the
    reconnection delay (digits only); an empty line dispatches; an event
    with no data is not dispatched."""

    def __init__(self, last_event_id=""):
        self.last_event_id = last_event_id
        self.retry_ms = None
        self._buf = b""
        self._after_cr = False
        self._first = True
        self._type = ""
        self._data = []
        self._id = last_event_id

    def feed(self, chunk):
        """Parses the next bytes; returns the events they completed."""
        if self._after_cr and chunk.startswith(b"\n"):
            chunk = chunk[1:]  # the LF of a CRLF split across two reads
        self._after_cr = False
        buf = self._buf + chunk
        events = []
        start = 0
        while True:
            cr, lf = buf.find(b"\r", start), buf.find(b"\n", start)
            ends = [i for i in (cr, lf) if i >= 0]
            if not ends:
                break
            end = min(ends)
            line = buf[start:end]
            if buf[end:end + 2] == b"\r\n":
                start = end + 2
            else:
                start = end + 1
                if end == cr and end == len(buf) - 1:
                    self._after_cr = True
            ev = self._line(line)
            if ev is not None:
                events.append(ev)
        self._buf = buf[start:]
        if len(self._buf) > MAX_LINE:
            raise ValueError("SSE line over %d bytes" % MAX_LINE)
        return events

    def _line(self, raw):
        if self._first:
            self._first = False
            if raw.startswith(b"\xef\xbb\xbf"):
                raw = raw[3:]
        line = raw.decode("utf-8", errors="replace")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # a comment (the agent's hello and keep-alives)
        field, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._type = value
        elif field == "data":
            self._data.append(value)
            if sum(len(d) for d in self._data) > MAX_LINE:
                raise ValueError("SSE event data over %d bytes" % MAX_LINE)
        elif field == "id":
            if "\0" not in value:
                self._id = value
        elif field == "retry":
            if value.isdigit() and value.isascii():
                self.retry_ms = int(value)
        return None  # other fields are ignored

    def _dispatch(self):
        self.last_event_id = self._id
        data, type_ = self._data, self._type or "message"
        self._data, self._type = [], ""
        if not data:
            return None
        return Event(type_, "\n".join(data), self.last_event_id)


class Shutdown(Exception):
    """SIGINT or SIGTERM: stop following."""


def apply(cache, ev):
    """Applies one agent event to `cache`; returns what it did (a dict) or
    None for events that are not about the cache."""
    try:
        d = json.loads(ev.data)
    except ValueError:
        d = None
    if not isinstance(d, dict):
        # Not the agent's JSON: we cannot know what it invalidates.
        return {"event": ev.type, "removed": cache.clear(), "why": "unreadable event"}
    if ev.type == "invalidate":
        keys = [k for k in d.get("keys", []) if isinstance(k, str)]
        return {"event": "invalidate", "keys": keys, "removed": cache.remove(keys)}
    if ev.type == "prefix":
        prefix = d.get("prefix")
        if not isinstance(prefix, str):
            return {"event": "prefix", "removed": cache.clear(), "why": "no prefix"}
        return {"event": "prefix", "prefix": prefix, "removed": cache.remove_prefix(prefix)}
    if ev.type in ("clear", "reset"):
        out = {"event": ev.type, "removed": cache.clear()}
        if ev.type == "reset":
            out["reason"] = d.get("reason")
        return out
    if ev.type == "custom":
        # An application's own message: caches ignore it, the application
        # may act on it.
        try:
            payload = base64.b64decode(d.get("payload", ""), validate=True)
        except (ValueError, TypeError):
            payload = b""
        return {
            "event": "custom",
            "topic": d.get("topic"),
            "payload": payload.decode("utf-8", errors="replace"),
        }
    if ev.type == "shutdown":
        return None  # the stream ends; follow() reconnects
    # A kind this program does not know: when in doubt, drop everything.
    return {"event": ev.type, "removed": cache.clear(), "why": "unknown event"}


def follow(agent, cache, on_applied=None, on_status=None, last_event_id="",
           prefixes=None, token=None, idle_timeout=45.0, stop=None):
    """Follows the agent's event stream forever (until `stop` is set or a
    Shutdown/KeyboardInterrupt is raised), keeping `cache` coherent.

    `on_applied(info, event)` is called after each applied event,
    `on_status(dict)` on connects, disconnects and `shutdown` events.
    `idle_timeout` must exceed the agent's keep-alive (15 s by default):
    a stream silent for longer is taken as dead and reconnected."""
    url = urllib.parse.urlsplit(agent)
    if url.scheme != "http":
        raise ValueError("the agent URL must be http://host:port")
    path = url.path.rstrip("/") + "/v1/events"
    if prefixes:
        path += "?" + urllib.parse.urlencode({"prefix": ",".join(prefixes)})
    retry_ms = 2000  # until the agent says otherwise
    failures = 0
    status = on_status or (lambda s: None)
    while stop is None or not stop.is_set():
        conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=idle_timeout)
        try:
            headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
            if last_event_id:
                headers["Last-Event-ID"] = last_event_id
            if token:
                headers["Authorization"] = "Bearer " + token
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            if resp.status != 200:
                body = resp.read(4096).decode("utf-8", errors="replace")
                raise ConnectionError("HTTP %d: %s" % (resp.status, body.strip()))
            ctype = resp.getheader("Content-Type", "")
            if not ctype.startswith("text/event-stream"):
                raise ConnectionError("not an event stream: %r" % ctype)
            failures = 0
            status({"connected": True, "last_event_id": last_event_id or None})
            parser = SseParser(last_event_id)
            while stop is None or not stop.is_set():
                chunk = resp.read1(65536)
                if not chunk:
                    status({"disconnected": "the agent closed the stream"})
                    break
                for ev in parser.feed(chunk):
                    if ev.type == "shutdown":
                        # The agent is stopping: the stream ends next, and
                        # we resume from our cursor once it is back.
                        try:
                            status({"shutdown": json.loads(ev.data)})
                        except ValueError:
                            status({"shutdown": ev.data})
                        continue
                    info = apply(cache, ev)
                    # Resume after this event only once it is applied.
                    last_event_id = ev.last_event_id
                    if info is not None and on_applied:
                        on_applied(info, ev)
                # Every event of the chunk is applied: resume from the last
                # id seen, also one without data (the agent's first event
                # carries the starting cursor, so a client that heard
                # nothing before a restart still gets its reset).
                if parser.last_event_id:
                    last_event_id = parser.last_event_id
                if parser.retry_ms is not None:
                    retry_ms = parser.retry_ms
        except (OSError, http.client.HTTPException, ValueError) as e:
            failures += 1
            status({"disconnected": "%s: %s" % (type(e).__name__, e)})
        finally:
            conn.close()
        # Reconnect after the agent's retry hint; back off while it fails.
        delay = min(retry_ms * (2 ** min(failures, 8)), 30000) if failures else retry_ms
        delay *= random.uniform(0.8, 1.2) if failures else 1.0
        if stop is not None:
            if stop.wait(delay / 1000.0):
                break
        else:
            time.sleep(delay / 1000.0)
    return last_event_id


def publish(agent, event, token=None, timeout=10.0):
    """Publishes one event or a batch through the agent: `event` is the
    JSON body, e.g. {"keys": ["user:42"]}, {"prefix": "page:"},
    {"all": True}, {"topic": "deploy", "payload": "<base64>"} or
    {"events": [...]}. Returns the receipt (stream, first_seq, last_seq,
    events); raises RuntimeError with the agent's error otherwise."""
    req = urllib.request.Request(
        agent.rstrip("/") + "/v1/invalidate",
        data=json.dumps(event).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read(65536))
    except urllib.error.HTTPError as e:
        body = e.read(4096).decode("utf-8", errors="replace")
        try:
            msg = json.loads(body)["error"]
        except (ValueError, KeyError, TypeError):
            msg = body
        raise RuntimeError("agent answered %d: %s" % (e.code, msg)) from None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--agent", default=os.environ.get("CACHECAST_AGENT", "http://127.0.0.1:7468"),
                   help="the agent's URL (default $CACHECAST_AGENT or http://127.0.0.1:7468)")
    p.add_argument("--token", default=os.environ.get("CACHECAST_HTTP_TOKEN"),
                   help="bearer token, when the agent has one (default $CACHECAST_HTTP_TOKEN)")
    g = p.add_argument_group("publishing (then exit)")
    g.add_argument("--publish", metavar="KEY", action="append", help="invalidate KEY (repeatable: one event)")
    g.add_argument("--publish-prefix", metavar="PREFIX", help="invalidate every key starting with PREFIX")
    g.add_argument("--publish-all", action="store_true", help="clear every cache")
    g.add_argument("--publish-topic", metavar="TOPIC", help="an application event on TOPIC")
    g.add_argument("--payload", default="", help="the --publish-topic payload (text)")
    c = p.add_argument_group("consuming")
    c.add_argument("--print", action="store_true", help="print one JSON line per applied event and status change")
    c.add_argument("--exit-after", type=int, metavar="N", help="exit 0 after N applied events")
    c.add_argument("--seed", metavar="KEY", action="append", default=[], help="put KEY in the cache at start (repeatable)")
    c.add_argument("--prefix", action="append", help="only events touching keys with this prefix (repeatable)")
    c.add_argument("--last-event-id", default="", help="resume after this cursor")
    args = p.parse_args()

    def on_signal(signum, frame):
        raise Shutdown()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    events = []
    if args.publish:
        events.append({"keys": args.publish})
    if args.publish_prefix is not None:
        events.append({"prefix": args.publish_prefix})
    if args.publish_all:
        events.append({"all": True})
    if args.publish_topic is not None:
        events.append({"topic": args.publish_topic,
                       "payload": base64.b64encode(args.payload.encode()).decode()})
    if events:
        body = events[0] if len(events) == 1 else {"events": events}
        try:
            print(json.dumps(publish(args.agent, body, args.token)), flush=True)
        except (RuntimeError, OSError) as e:
            print("publish failed: %s" % e, file=sys.stderr)
            return 1
        return 0

    cache = Cache()
    for k in args.seed:
        cache.set(k, "value of %s" % k)
    applied = [0]

    def out(d):
        if args.print:
            print(json.dumps(d, sort_keys=True), flush=True)

    def on_applied(info, ev):
        info = dict(info, id=ev.last_event_id, size=len(cache))
        out(info)
        if not args.print:
            print("%s -> %d entries" % (ev.type, len(cache)), file=sys.stderr)
        applied[0] += 1
        if args.exit_after is not None and applied[0] >= args.exit_after:
            raise Shutdown()

    def on_status(s):
        out(s)
        if not args.print:
            print("agent: %s" % json.dumps(s), file=sys.stderr)

    try:
        follow(args.agent, cache, on_applied, on_status, args.last_event_id,
               args.prefix, args.token)
    except (Shutdown, KeyboardInterrupt):
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
