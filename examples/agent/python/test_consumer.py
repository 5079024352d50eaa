"""Unit tests of consumer.py's SSE parser and cache rules (stdlib
unittest; cli/tests/agent_examples.rs runs them): what the agent's own
output does not exercise (CR and CRLF line ends split across reads,
multi-line data, comments, retry, ids without data, hostile lines)."""

import json
import unittest

from consumer import MAX_LINE, Cache, Event, SseParser, apply


def parse(raw, step):
    p = SseParser()
    events = []
    for i in range(0, len(raw), step):
        events += p.feed(raw[i:i + step])
    return p, [(e.type, e.data, e.last_event_id) for e in events]


class ParserTest(unittest.TestCase):
    def test_every_line_end_and_every_split_parse_alike(self):
        raw = (b"\xef\xbb\xbfretry: 150\r\n: a comment\r\n\r\n"
               b"event: invalidate\rid: e:1\ndata: {\"a\":\r\ndata:1}\r\n\r\n"
               b"id: e:2\n\n"                      # an id alone: no event
               b"data\n\n"                         # empty data: dispatched
               b"event: x\nid: bad\0id\nfoo: bar\ndata:  two spaces\n\n"
               b"data: never ended\n")
        for step in range(1, 12):
            p, events = parse(raw, step)
            self.assertEqual(p.retry_ms, 150, step)
            self.assertEqual(events, [
                ("invalidate", '{"a":\n1}', "e:1"),
                ("message", "", "e:2"),
                ("x", " two spaces", "e:2"),
            ], step)
            self.assertEqual(p.last_event_id, "e:2", step)

    def test_a_line_without_end_is_bounded(self):
        p = SseParser()
        with self.assertRaises(ValueError):
            for _ in range(MAX_LINE // 65536 + 2):
                p.feed(b"x" * 65536)


class ApplyTest(unittest.TestCase):
    def test_events_change_the_cache_as_the_agent_means(self):
        c = Cache()
        for k in ("user:1", "user:2", "page:1", "page:2"):
            c.set(k, k)

        def ev(type_, **d):
            return apply(c, Event(type_, json.dumps(d), "e:1"))

        self.assertEqual(ev("invalidate", keys=["user:1", "nope"])["removed"], 1)
        self.assertEqual(ev("prefix", prefix="page:")["removed"], 2)
        self.assertEqual(ev("custom", topic="t", payload="djI=")["payload"], "v2")
        self.assertEqual(len(c), 1)
        self.assertEqual(ev("reset", reason="agent_restarted")["removed"], 1)
        c.set("a", 1)
        self.assertEqual(ev("clear")["removed"], 1)
        c.set("a", 1)
        # Unknown kinds and unreadable data: drop everything.
        self.assertEqual(ev("future-kind")["removed"], 1)
        c.set("a", 1)
        self.assertEqual(apply(c, Event("invalidate", "not json", "e:1"))["removed"], 1)
        self.assertIsNone(ev("shutdown", reason="stopping"))


if __name__ == "__main__":
    unittest.main()
