#!/usr/bin/env node
// A Node application's in-process cache kept coherent by the local
// cachecast agent, over Server-Sent Events with the `eventsource` package
// (Node 20 has no global EventSource) and publishing with fetch.
//
// The agent streams every invalidation (GET /v1/events): `invalidate`
// removes keys, `prefix` removes keys starting with it, `clear` and `reset`
// remove everything (a `reset` means "something may have been missed": the
// only safe answer is to drop the whole cache). EventSource reconnects by
// itself and sends Last-Event-ID, so the agent sends exactly what was
// missed, or a `reset` first when it cannot (it restarted, or the cursor
// is too old).
//
//   npm ci
//   node consumer.js --agent http://127.0.0.1:7468 --print
//   node consumer.js --agent http://127.0.0.1:7468 --publish user:42
//   node consumer.js --publish-prefix page:/shop/
//   node consumer.js --publish-all
//   node consumer.js --publish-topic deploy --payload v2
'use strict';

const { EventSource } = require('eventsource');
const { parseArgs } = require('node:util');

/** A small in-process cache. */
class Cache {
  constructor() {
    this.map = new Map();
  }

  /** The cached value of `key`, loaded with `load(key)` on a miss. */
  async get(key, load) {
    if (this.map.has(key)) return this.map.get(key);
    const value = await load(key);
    this.map.set(key, value);
    return value;
  }

  set(key, value) {
    this.map.set(key, value);
  }

  remove(keys) {
    let n = 0;
    for (const k of keys) if (this.map.delete(k)) n++;
    return n;
  }

  removePrefix(prefix) {
    let n = 0;
    for (const k of this.map.keys()) {
      if (k.startsWith(prefix)) {
        this.map.delete(k);
        n++;
      }
    }
    return n;
  }

  clear() {
    const n = this.map.size;
    this.map.clear();
    return n;
  }

  get size() {
    return this.map.size;
  }
}

/** Applies one agent event to `cache`; returns what it did. */
function apply(cache, type, data) {
  let d;
  try {
    d = JSON.parse(data);
  } catch {
    d = null;
  }
  if (d === null || typeof d !== 'object' || Array.isArray(d)) {
    // Not the agent's JSON: we cannot know what it invalidates.
    return { event: type, removed: cache.clear(), why: 'unreadable event' };
  }
  switch (type) {
    case 'invalidate': {
      const keys = Array.isArray(d.keys) ? d.keys.filter((k) => typeof k === 'string') : [];
      return { event: type, keys, removed: cache.remove(keys) };
    }
    case 'prefix':
      if (typeof d.prefix !== 'string') return { event: type, removed: cache.clear(), why: 'no prefix' };
      return { event: type, prefix: d.prefix, removed: cache.removePrefix(d.prefix) };
    case 'clear':
      return { event: type, removed: cache.clear() };
    case 'reset':
      return { event: type, reason: d.reason, removed: cache.clear() };
    case 'custom':
      // An application's own message: caches ignore it, the application
      // may act on it.
      return {
        event: type,
        topic: d.topic,
        payload: Buffer.from(typeof d.payload === 'string' ? d.payload : '', 'base64').toString('utf8'),
      };
    default:
      // A kind this program does not know: when in doubt, drop everything.
      return { event: type, removed: cache.clear(), why: 'unknown event' };
  }
}

/**
 * Follows the agent's event stream, keeping `cache` coherent, until the
 * returned `stop()` is called. `onApplied(info, lastEventId)` runs after
 * each applied event, `onStatus(obj)` on connects, errors and `shutdown`.
 */
function follow(agent, cache, { lastEventId = '', prefixes, token, onApplied, onStatus }) {
  let es = null;
  let timer = null;
  let stopped = false;
  let failures = 0;
  // With a token, every request carries it (EventSource lets us wrap fetch).
  const init = token
    ? {
        fetch: (input, opts) =>
          fetch(input, { ...opts, headers: { ...opts.headers, Authorization: `Bearer ${token}` } }),
      }
    : {};

  const connect = () => {
    timer = null;
    const url = new URL('/v1/events', agent);
    if (prefixes && prefixes.length) url.searchParams.set('prefix', prefixes.join(','));
    // A new EventSource cannot send Last-Event-ID on its first request; the
    // agent takes it as a query parameter too. On its own reconnects,
    // EventSource sends the header, which the agent prefers.
    if (lastEventId) url.searchParams.set('last_event_id', lastEventId);
    es = new EventSource(url, init);
    es.addEventListener('open', () => {
      failures = 0;
      onStatus({ connected: true, last_event_id: lastEventId || null });
    });
    const handle = (e) => {
      if (stopped) return;
      const info = apply(cache, e.type, e.data);
      // Resume after this event only once it is applied.
      if (e.lastEventId) lastEventId = e.lastEventId;
      onApplied(info, lastEventId);
    };
    for (const type of ['invalidate', 'prefix', 'clear', 'custom', 'reset', 'message']) {
      es.addEventListener(type, handle);
    }
    es.addEventListener('shutdown', (e) => {
      // The agent is stopping: the stream ends next, and EventSource
      // reconnects with our cursor once it is back.
      let data = e.data;
      try {
        data = JSON.parse(e.data);
      } catch {
        // keep the text
      }
      onStatus({ shutdown: data });
    });
    es.addEventListener('error', (err) => {
      onStatus({ disconnected: err.message || 'connection error', code: err.code });
      if (es.readyState === EventSource.CLOSED && !stopped) {
        // A non-200 answer (503 while the agent joins, 401 for a wrong
        // token): EventSource gives up; we try again with back-off.
        failures++;
        timer = setTimeout(connect, Math.min(250 * 2 ** failures, 30000) * (0.8 + 0.4 * Math.random()));
      }
    });
  };
  connect();
  return () => {
    stopped = true;
    if (timer) clearTimeout(timer);
    if (es) es.close();
  };
}

/**
 * Publishes one event or a batch through the agent: `event` is the JSON
 * body ({keys: [...]}, {prefix}, {all: true}, {topic, payload: base64} or
 * {events: [...]}). Resolves to the receipt (stream, first_seq, last_seq,
 * events); rejects with the agent's error.
 */
async function publish(agent, event, token) {
  const headers = { 'Content-Type': 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  const resp = await fetch(new URL('/v1/invalidate', agent), {
    method: 'POST',
    headers,
    body: JSON.stringify(event),
    signal: AbortSignal.timeout(10000),
  });
  const text = await resp.text();
  if (resp.status !== 202) {
    let msg = text;
    try {
      msg = JSON.parse(text).error;
    } catch {
      // keep the text
    }
    throw new Error(`agent answered ${resp.status}: ${msg}`);
  }
  return JSON.parse(text);
}

async function main() {
  const { values: a } = parseArgs({
    options: {
      agent: { type: 'string', default: process.env.CACHECAST_AGENT || 'http://127.0.0.1:7468' },
      token: { type: 'string', default: process.env.CACHECAST_HTTP_TOKEN },
      publish: { type: 'string', multiple: true },
      'publish-prefix': { type: 'string' },
      'publish-all': { type: 'boolean' },
      'publish-topic': { type: 'string' },
      payload: { type: 'string', default: '' },
      print: { type: 'boolean' },
      'exit-after': { type: 'string' },
      seed: { type: 'string', multiple: true, default: [] },
      prefix: { type: 'string', multiple: true },
      'last-event-id': { type: 'string', default: '' },
    },
  });

  const events = [];
  if (a.publish) events.push({ keys: a.publish });
  if (a['publish-prefix'] !== undefined) events.push({ prefix: a['publish-prefix'] });
  if (a['publish-all']) events.push({ all: true });
  if (a['publish-topic'] !== undefined) {
    events.push({ topic: a['publish-topic'], payload: Buffer.from(a.payload).toString('base64') });
  }
  if (events.length) {
    const body = events.length === 1 ? events[0] : { events };
    try {
      console.log(JSON.stringify(await publish(a.agent, body, a.token)));
    } catch (e) {
      console.error(`publish failed: ${e.message}`);
      process.exitCode = 1;
    }
    return;
  }

  const cache = new Cache();
  for (const k of a.seed) cache.set(k, `value of ${k}`);
  const exitAfter = a['exit-after'] === undefined ? Infinity : Number(a['exit-after']);
  const out = (obj) => {
    if (a.print) process.stdout.write(`${JSON.stringify(obj)}\n`);
    else console.error(`agent: ${JSON.stringify(obj)}`);
  };
  let applied = 0;
  let stop = null;
  const quit = () => {
    if (stop) stop();
    process.exitCode = 0;
  };
  stop = follow(a.agent, cache, {
    lastEventId: a['last-event-id'],
    prefixes: a.prefix,
    token: a.token,
    onStatus: out,
    onApplied: (info, id) => {
      out({ ...info, id, size: cache.size });
      applied++;
      if (applied >= exitAfter) quit();
    },
  });
  process.on('SIGINT', quit);
  process.on('SIGTERM', quit);
}

module.exports = { Cache, apply, follow, publish };

if (require.main === module) {
  main().catch((e) => {
    console.error(e);
    process.exitCode = 1;
  });
}
