//! Wire format, version 1: every byte cachecast puts on the network.
//!
//! A datagram is a [`Header`] followed by one [`Body`], in bincode 2's
//! format (standard config: little-endian, variable-length integers). The
//! header and the control bodies go through bincode's serde support; the
//! events of `Data` and `Repair` are written and read by hand in the same
//! format ([`Events`]), so that a received event is checked in place and
//! never copied into an owned value unless asked for. Decoding is
//! hostile-input safe: the header is checked (magic, version, flags,
//! cluster) before the body is decoded, trailing bytes are rejected, and
//! every count and length is checked against the limits below before it is
//! used. Nothing here panics on received bytes.
//!
//! Allocation is bounded: a received run of events is copied once, at most
//! a datagram, with the length of each (at most 4 KiB); strings of control bodies are bounded by bincode's size
//! limit ([`MAX_DATAGRAM`] per datagram), and the ranges of `Nak` and
//! `Unavailable` decode through a bounded visitor that rejects a claimed
//! length over the limit before allocating.
//!
//! This module may not know anything about protocol state: it only turns
//! values into bytes and back. Golden-byte tests pin the format.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use std::{fmt, marker::PhantomData};

/// The four bytes every cachecast datagram starts with.
pub const MAGIC: [u8; 4] = *b"CCST";
/// The wire format version this build speaks.
pub const VERSION: u8 = 1;
/// Header flag bit 0: an authentication trailer follows (not supported in v1
/// without a key, so such datagrams are rejected).
pub const FLAG_AUTH: u8 = 0x01;

/// Largest datagram accepted on receive (the UDP payload limit).
pub const MAX_DATAGRAM: usize = 65_507;
/// Events in one `Data` or `Repair` datagram.
pub const MAX_EVENTS: usize = 1024;
/// Keys in one `Invalidate` event.
pub const MAX_KEYS: usize = 1024;
/// Bytes in one key, prefix or topic.
pub const MAX_KEY_LEN: usize = 1024;
/// Bytes in a node name.
pub const MAX_NODE_NAME: usize = 64;
/// Ranges in one `Nak` or `Unavailable`.
pub const MAX_RANGES: usize = 64;
/// Sequence numbers at or above this are rejected (they never occur: a
/// stream would need centuries to reach it), so `seq + 1` never overflows.
pub const MAX_SEQ: u64 = 1 << 62;
/// Upper bound on the bytes a `Data`/`Repair` datagram needs besides its
/// events (header, body tag, `first_seq`, event count).
pub const DATA_OVERHEAD: usize = 40;

/// A half-open range of sequence numbers `start..end`.
pub type SeqRange = (u64, u64);

/// The fixed part of every datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// Always [`MAGIC`].
    pub magic: [u8; 4],
    /// Always [`VERSION`].
    pub version: u8,
    /// Bit 0: [`FLAG_AUTH`]; the others are reserved and must be zero.
    pub flags: u8,
    /// [`cluster_hash`] of the cluster name; foreign traffic is dropped.
    pub cluster: u32,
    /// The sending node's stream: random per process start.
    pub stream: u64,
}

impl Header {
    /// A version-1 header with no flags.
    pub fn new(cluster: u32, stream: u64) -> Self {
        Header {
            magic: MAGIC,
            version: VERSION,
            flags: 0,
            cluster,
            stream,
        }
    }
}

/// What a datagram says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Fresh events: the `i`th of `events` has seq `first_seq + i`.
    Data { first_seq: u64, events: Events },
    /// The stream is alive; its next seq is `next_seq`, and the sender still
    /// holds everything from `oldest` on.
    Heartbeat {
        next_seq: u64,
        oldest: u64,
        node: String,
    },
    /// "I just joined": every stream answers with a `Heartbeat`.
    Hello { node: String },
    /// A receiver misses these half-open ranges of `stream`.
    Nak { stream: u64, ranges: Vec<SeqRange> },
    /// Retransmitted events: the `i`th of `events` has seq `first_seq + i`.
    Repair { first_seq: u64, events: Events },
    /// The sender of `stream` no longer holds these ranges: receivers Reset.
    Unavailable { stream: u64, ranges: Vec<SeqRange> },
    /// Clean end of the stream; everything below `next_seq` was sent.
    Goodbye { next_seq: u64 },
}

/// One invalidation, owned: what an application publishes. A received event
/// is an [`EncodedEvent`]; [`EncodedEvent::to_event`] turns it into this.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    /// Drop these keys.
    Invalidate { keys: Vec<String> },
    /// Drop every key starting with `prefix`.
    InvalidatePrefix { prefix: String },
    /// Drop everything.
    ClearAll,
    /// Application-defined message.
    Custom { topic: String, payload: Vec<u8> },
}

/// A decoded datagram.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    pub header: Header,
    pub body: Body,
}

/// Why a received datagram was dropped. Every variant is counted in
/// `Stats`; none of them is a panic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Longer than [`MAX_DATAGRAM`].
    #[error("datagram of {0} bytes is over the {MAX_DATAGRAM}-byte limit")]
    TooLarge(usize),
    /// Not a cachecast datagram at all.
    #[error("bad magic: not a cachecast datagram")]
    BadMagic,
    /// A cachecast datagram of a version this build does not speak.
    #[error("wire version {0} is not supported (this build speaks {VERSION})")]
    BadVersion(u8),
    /// Another cluster on the same group and port.
    #[error("datagram of another cluster ({0:#010x})")]
    WrongCluster(u32),
    /// The authentication flag is set, or a reserved flag bit.
    #[error("flags {0:#04x} not supported (authentication needs a key)")]
    BadFlags(u8),
    /// The bytes do not decode as a header and body.
    #[error("malformed datagram: {0}")]
    Malformed(String),
    /// Bytes left over after the body.
    #[error("{0} trailing bytes after the body")]
    TrailingBytes(usize),
    /// A count or a length is over its limit, or a value is out of range.
    #[error("invalid datagram: {0}")]
    Invalid(&'static str),
}

impl DecodeError {
    /// A short, stable name for counters and logs.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::TooLarge(_) => "too_large",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::BadVersion(_) => "bad_version",
            DecodeError::WrongCluster(_) => "wrong_cluster",
            DecodeError::BadFlags(_) => "bad_flags",
            DecodeError::Malformed(_) => "malformed",
            DecodeError::TrailingBytes(_) => "trailing_bytes",
            DecodeError::Invalid(_) => "invalid",
        }
    }
}

/// Why an event cannot be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The event alone does not fit in one datagram.
    #[error("event of {size} bytes does not fit in a {max_datagram}-byte datagram (at most {} bytes of event); split it into several events", max_datagram.saturating_sub(DATA_OVERHEAD))]
    TooLarge { size: usize, max_datagram: usize },
    /// More keys than [`MAX_KEYS`].
    #[error("{0} keys in one event; at most {MAX_KEYS}")]
    TooManyKeys(usize),
    /// An `Invalidate` with no keys.
    #[error("an invalidation needs at least one key")]
    NoKeys,
    /// A key, prefix or topic longer than [`MAX_KEY_LEN`] bytes.
    #[error("a key, prefix or topic of {0} bytes; at most {MAX_KEY_LEN}")]
    KeyTooLong(usize),
    /// An [`EventBatch`] already holds [`MAX_BATCH`] events.
    #[error("a batch holds at most {0} events; publish it and start another")]
    BatchFull(usize),
}

fn config() -> impl bincode::config::Config {
    // The limit bounds every length-prefixed allocation while decoding.
    bincode::config::standard().with_limit::<MAX_DATAGRAM>()
}

/// FNV-1a (32 bit) of the cluster name: stable across builds and platforms.
pub fn cluster_hash(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

/// Encodes `header` and `body` into `buf`, replacing its contents.
pub fn encode(header: &Header, body: &Body, buf: &mut Vec<u8>) {
    buf.clear();
    put(buf, header);
    // The body: its variant index, then its fields in order (what serde
    // derive would write for the enum).
    match body {
        Body::Data { first_seq, events } | Body::Repair { first_seq, events } => {
            let tag = if matches!(body, Body::Data { .. }) {
                0
            } else {
                4
            };
            put_varint(buf, tag);
            put_varint(buf, *first_seq);
            put_varint(buf, events.len() as u64);
            buf.extend_from_slice(&events.bytes);
        }
        Body::Heartbeat {
            next_seq,
            oldest,
            node,
        } => {
            put_varint(buf, 1);
            put(buf, &(next_seq, oldest, node));
        }
        Body::Hello { node } => {
            put_varint(buf, 2);
            put(buf, node);
        }
        Body::Nak { stream, ranges } => {
            put_varint(buf, 3);
            put(buf, &(stream, ranges));
        }
        Body::Unavailable { stream, ranges } => {
            put_varint(buf, 5);
            put(buf, &(stream, ranges));
        }
        Body::Goodbye { next_seq } => {
            put_varint(buf, 6);
            put(buf, next_seq);
        }
    }
}

/// The bytes every datagram of `stream` in `cluster` starts with: its
/// header.
pub fn header_bytes(cluster: u32, stream: u64) -> Vec<u8> {
    let mut buf = Vec::new();
    put(&mut buf, &Header::new(cluster, stream));
    buf
}

/// Appends `value`, encoded with bincode.
fn put(buf: &mut Vec<u8>, value: &impl Serialize) {
    // Writing into a Vec cannot fail, and every value here is encodable.
    bincode::serde::encode_into_std_write(value, buf, config())
        .expect("encoding into a Vec cannot fail");
}

/// The number of bytes `event` takes inside a datagram.
pub fn encoded_event_len(event: &Event) -> usize {
    let field = |b: &[u8]| varint_len(b.len() as u64) + b.len();
    1 + match event {
        Event::Invalidate { keys } => {
            varint_len(keys.len() as u64) + keys.iter().map(|k| field(k.as_bytes())).sum::<usize>()
        }
        Event::InvalidatePrefix { prefix } => field(prefix.as_bytes()),
        Event::ClearAll => 0,
        Event::Custom { topic, payload } => field(topic.as_bytes()) + field(payload),
    }
}

/// Checks an event against the limits and `max_datagram`, before it is
/// published. Returns its encoded length.
pub fn check_event(event: &Event, max_datagram: usize) -> Result<usize, EventError> {
    validate_event(event)?;
    let size = encoded_event_len(event);
    check_size(size, max_datagram)?;
    Ok(size)
}

fn validate_event(event: &Event) -> Result<(), EventError> {
    match event {
        Event::Invalidate { keys } => validate_keys(keys.iter().map(String::as_str)),
        Event::InvalidatePrefix { prefix } => check_text(prefix),
        Event::ClearAll => Ok(()),
        Event::Custom { topic, payload } => {
            check_text(topic)?;
            if payload.len() > MAX_DATAGRAM {
                return Err(EventError::TooLarge {
                    size: payload.len(),
                    max_datagram: MAX_DATAGRAM,
                });
            }
            Ok(())
        }
    }
}

/// The keys of an `Invalidate`: at least one, at most [`MAX_KEYS`], each
/// at most [`MAX_KEY_LEN`] bytes.
fn validate_keys<'a>(keys: impl ExactSizeIterator<Item = &'a str>) -> Result<(), EventError> {
    match keys.len() {
        0 => return Err(EventError::NoKeys),
        n if n > MAX_KEYS => return Err(EventError::TooManyKeys(n)),
        _ => {}
    }
    keys.into_iter().try_for_each(check_text)
}

fn check_text(s: &str) -> Result<(), EventError> {
    if s.len() > MAX_KEY_LEN {
        return Err(EventError::KeyTooLong(s.len()));
    }
    Ok(())
}

/// An event of `size` encoded bytes fits in a datagram of `max_datagram`.
pub fn check_size(size: usize, max_datagram: usize) -> Result<(), EventError> {
    if size + DATA_OVERHEAD > max_datagram {
        return Err(EventError::TooLarge { size, max_datagram });
    }
    Ok(())
}

/// Decodes and validates the header of a received datagram of cluster
/// `cluster`; returns it and the offset of the body. Cheap: the node checks
/// the stream (its own traffic is ignored) before the body is decoded.
pub fn decode_header(bytes: &[u8], cluster: u32) -> Result<(Header, usize), DecodeError> {
    if bytes.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLarge(bytes.len()));
    }
    if bytes.len() < 4 || bytes[..4] != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    // The version byte follows the magic in every version: checked before
    // the header is decoded, as another version's header may differ.
    if let Some(&version) = bytes.get(4).filter(|&&v| v != VERSION) {
        return Err(DecodeError::BadVersion(version));
    }
    let (header, used): (Header, usize) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(malformed)?;
    if header.flags != 0 {
        return Err(DecodeError::BadFlags(header.flags));
    }
    if header.cluster != cluster {
        return Err(DecodeError::WrongCluster(header.cluster));
    }
    Ok((header, used))
}

/// Decodes and validates one received datagram of cluster `cluster`.
pub fn decode(bytes: &[u8], cluster: u32) -> Result<Datagram, DecodeError> {
    let (header, used) = decode_header(bytes, cluster)?;
    let body = decode_body(&bytes[used..])?;
    Ok(Datagram { header, body })
}

/// Decodes and validates the body that follows a header. The events of a
/// `Data` or `Repair` body are checked in place and copied once, whole,
/// into the [`Events`] that shares them: no allocation per event.
pub fn decode_body(rest: &[u8]) -> Result<Body, DecodeError> {
    if rest.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLarge(rest.len()));
    }
    let mut r = Reader(rest, Utf8::Check);
    let tag = r.varint_u32()?;
    let (body, left) = match tag {
        0 | 4 => {
            let first_seq = r.varint()?;
            let events = Events::decode(&mut r)?;
            let body = if tag == 0 {
                Body::Data { first_seq, events }
            } else {
                Body::Repair { first_seq, events }
            };
            (body, r.0.len())
        }
        1 => fields(r.0, |(next_seq, oldest, node)| Body::Heartbeat {
            next_seq,
            oldest,
            node,
        })?,
        2 => fields(r.0, |node| Body::Hello { node })?,
        3 => fields(r.0, |RangesOf { stream, ranges }| Body::Nak {
            stream,
            ranges,
        })?,
        5 => fields(r.0, |RangesOf { stream, ranges }| Body::Unavailable {
            stream,
            ranges,
        })?,
        6 => fields(r.0, |next_seq| Body::Goodbye { next_seq })?,
        _ => return Err(DecodeError::Malformed(format!("unknown body type {tag}"))),
    };
    if left != 0 {
        return Err(DecodeError::TrailingBytes(left));
    }
    validate_body(&body)?;
    Ok(body)
}

/// Decodes the fields of a control body with bincode and builds the body;
/// also returns how many bytes were left over.
fn fields<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    body: impl FnOnce(T) -> Body,
) -> Result<(Body, usize), DecodeError> {
    let (value, used): (T, usize) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(malformed)?;
    Ok((body(value), bytes.len() - used))
}

/// The fields of `Nak` and `Unavailable`.
#[derive(Deserialize)]
struct RangesOf {
    stream: u64,
    #[serde(deserialize_with = "ranges")]
    ranges: Vec<SeqRange>,
}

/// Appends the encoding of `event` to `out` (as it appears inside a `Data`
/// or `Repair` body) and returns its length.
pub fn encode_event(event: &Event, out: &mut impl BufMut) -> usize {
    match event {
        Event::Invalidate { keys } => put_invalidate(out, keys.iter().map(String::as_str)),
        Event::InvalidatePrefix { prefix } => {
            out.put_u8(1);
            put_field(out, prefix.as_bytes());
        }
        Event::ClearAll => out.put_u8(2),
        Event::Custom { topic, payload } => {
            out.put_u8(3);
            put_field(out, topic.as_bytes());
            put_field(out, payload);
        }
    }
    encoded_event_len(event)
}

fn put_invalidate<'a>(out: &mut impl BufMut, keys: impl ExactSizeIterator<Item = &'a str>) {
    out.put_u8(0);
    put_varint(out, keys.len() as u64);
    for k in keys {
        put_field(out, k.as_bytes());
    }
}

/// Decodes one event encoded by [`encode_event`] (exactly `bytes`).
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader(bytes, Utf8::Check);
    let mut invalid = None;
    let event = read_event(&mut r, &mut invalid)?;
    if !r.0.is_empty() {
        return Err(DecodeError::TrailingBytes(r.0.len()));
    }
    if let Some(reason) = invalid {
        return Err(DecodeError::Invalid(reason));
    }
    Ok(event.to_event())
}

fn seq_ok(seq: u64) -> bool {
    (1..MAX_SEQ).contains(&seq)
}

fn validate_events(first_seq: u64, events: &Events) -> Result<(), DecodeError> {
    if events.is_empty() {
        return Err(DecodeError::Invalid("no events"));
    }
    if !seq_ok(first_seq) || first_seq + events.len() as u64 > MAX_SEQ {
        return Err(DecodeError::Invalid("sequence number out of range"));
    }
    Ok(())
}

fn validate_ranges(stream_ranges: &[SeqRange]) -> Result<(), DecodeError> {
    if stream_ranges.is_empty() || stream_ranges.len() > MAX_RANGES {
        return Err(DecodeError::Invalid(BAD_RANGE_COUNT));
    }
    for &(start, end) in stream_ranges {
        if !seq_ok(start) || end <= start || end > MAX_SEQ {
            return Err(DecodeError::Invalid("bad range"));
        }
    }
    Ok(())
}

fn validate_name(name: &str) -> Result<(), DecodeError> {
    if name.len() > MAX_NODE_NAME {
        return Err(DecodeError::Invalid("node name too long"));
    }
    Ok(())
}

fn validate_body(body: &Body) -> Result<(), DecodeError> {
    match body {
        Body::Data { first_seq, events } | Body::Repair { first_seq, events } => {
            validate_events(*first_seq, events)
        }
        Body::Heartbeat {
            next_seq,
            oldest,
            node,
        } => {
            if !seq_ok(*next_seq) || !seq_ok(*oldest) || oldest > next_seq {
                return Err(DecodeError::Invalid("bad heartbeat position"));
            }
            validate_name(node)
        }
        Body::Hello { node } => validate_name(node),
        Body::Nak { ranges, .. } | Body::Unavailable { ranges, .. } => validate_ranges(ranges),
        Body::Goodbye { next_seq } => {
            if !seq_ok(*next_seq) {
                return Err(DecodeError::Invalid("bad goodbye position"));
            }
            Ok(())
        }
    }
}

// ---------------------------------------------------------------------------
// Events, encoded. `Data` and `Repair` carry their events as the bytes
// bincode writes for a `Vec<Event>` (a count, then each event: its variant
// index and its fields). These are written and read by hand, in place: a
// received event is checked once and then shared, never copied into an
// owned value unless the application asks for one. The golden-byte tests
// pin that these bytes are bincode's.

/// A run of encoded events: what a `Data` or `Repair` datagram carries.
/// Checked against the limits when built or decoded; cheap to clone (the
/// bytes are shared).
#[derive(Clone, Default)]
pub struct Events {
    bytes: Bytes,
    count: u32,
    /// The length of each event still in the run, when known (a received
    /// run: found by the walk that checked it), so that taking events off
    /// needs no second walk. `None` for runs built here.
    lens: Option<Lens>,
}

/// Event lengths, shared by the clones of a run; `next` is the first one
/// still in it. Each is exactly what the checking walk found: the spans
/// they give are the checked events (see `Utf8::Checked`).
#[derive(Clone)]
struct Lens {
    all: std::sync::Arc<[u32]>,
    next: u32,
}

impl Lens {
    fn get(&self, i: u32) -> Option<usize> {
        self.all.get((self.next + i) as usize).map(|&n| n as usize)
    }
}

impl Events {
    /// Encodes `events`, each checked against the limits (but not against a
    /// datagram size).
    pub fn new(events: &[Event]) -> Result<Events, EventError> {
        events.iter().try_for_each(validate_event)?;
        Ok(Events::new_unchecked(events))
    }

    /// Encodes `events` without checking them: for tests that put invalid
    /// events on the wire (receivers must reject them).
    #[doc(hidden)]
    pub fn new_unchecked(events: &[Event]) -> Events {
        let mut out = BytesMut::new();
        for e in events {
            encode_event(e, &mut out);
        }
        Events {
            bytes: out.freeze(),
            count: events.len() as u32,
            lens: None,
        }
    }

    /// `count` events encoded back to back by [`encode_event`] (or copied
    /// from an [`EncodedEvent`]), already checked.
    pub(crate) fn from_encoded(bytes: Bytes, count: u32) -> Events {
        Events {
            bytes,
            count,
            lens: None,
        }
    }

    /// Reads a count and that many events at `r`, checking each.
    fn decode(r: &mut Reader<'_>) -> Result<Events, DecodeError> {
        let count = r.varint()?;
        if count > MAX_EVENTS as u64 {
            return Err(DecodeError::Invalid(TOO_MANY_EVENTS));
        }
        let start = r.0;
        // A semantic fault (no keys, a key too long) is reported after the
        // structural walk, as decoding whole and then validating would.
        let mut invalid = None;
        let mut lens = [0u32; MAX_EVENTS];
        for len in &mut lens[..count as usize] {
            let before = r.0.len();
            read_event(r, &mut invalid)?;
            // Exact, never cut short: a wrong length would make later
            // reads start inside a checked event.
            *len = u32::try_from(before - r.0.len())
                .map_err(|_| DecodeError::TooLarge(before - r.0.len()))?;
        }
        if let Some(reason) = invalid {
            return Err(DecodeError::Invalid(reason));
        }
        let used = start.len() - r.0.len();
        Ok(Events {
            bytes: Bytes::copy_from_slice(&start[..used]),
            count: count as u32,
            lens: Some(Lens {
                all: lens[..count as usize].into(),
                next: 0,
            }),
        })
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The events in order, each sharing these bytes.
    pub fn iter(&self) -> EventsIter<'_> {
        EventsIter {
            bytes: &self.bytes,
            at: 0,
            left: self.count,
            lens: self.lens.as_ref(),
            taken: 0,
        }
    }

    /// The events in order, read in place: nothing is allocated or
    /// reference-counted per event.
    pub fn views(&self) -> EventViews<'_> {
        EventViews { it: self.iter() }
    }

    /// Takes the first event off the run (sharing its bytes).
    pub fn pop_front(&mut self) -> Option<EncodedEvent> {
        let first = self.iter().next()?;
        self.bytes.advance(first.0.len());
        self.count -= 1;
        if let Some(l) = &mut self.lens {
            l.next += 1;
        }
        Some(first)
    }

    /// Drops the first `n` events (all of them if there are fewer).
    pub fn skip(&mut self, n: usize) {
        let mut it = self.iter();
        let mut used = 0;
        for e in it.by_ref().take(n) {
            used += e.0.len();
        }
        let (left, taken) = (it.left, it.taken);
        self.bytes.advance(used);
        self.count = left;
        if let Some(l) = &mut self.lens {
            l.next += taken;
        }
    }

    /// The events, owned.
    pub fn to_vec(&self) -> Vec<Event> {
        self.iter().map(|e| e.to_event()).collect()
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

impl PartialEq for Events {
    fn eq(&self, other: &Events) -> bool {
        self.count == other.count && self.iter().eq(other.iter())
    }
}

impl Eq for Events {}

/// Events encoded as they are added, ready to publish together
/// (`Node::publish_batch`): one buffer for all of them, no allocation per
/// event, and nothing left to encode on the node's side.
#[derive(Debug, Clone, Default)]
pub struct EventBatch {
    bytes: BytesMut,
    count: u32,
    largest: usize,
}

impl EventBatch {
    /// An empty batch.
    pub fn new() -> EventBatch {
        EventBatch::default()
    }

    /// An empty batch with room for `bytes` of encoded events.
    pub fn with_capacity(bytes: usize) -> EventBatch {
        EventBatch {
            bytes: BytesMut::with_capacity(bytes),
            ..EventBatch::default()
        }
    }

    /// Adds `event`, checked against the limits (the datagram size is
    /// checked when the batch is published). At most [`MAX_BATCH`] events.
    pub fn push(&mut self, event: &Event) -> Result<(), EventError> {
        validate_event(event)?;
        self.room()?;
        let size = encode_event(event, &mut self.bytes);
        self.added(size);
        Ok(())
    }

    /// Adds `Invalidate { keys }` from borrowed keys (no allocation once
    /// the batch has room).
    pub fn invalidate(&mut self, keys: &[&str]) -> Result<(), EventError> {
        validate_keys(keys.iter().copied())?;
        self.room()?;
        let start = self.bytes.len();
        put_invalidate(&mut self.bytes, keys.iter().copied());
        let size = self.bytes.len() - start;
        self.added(size);
        Ok(())
    }

    fn room(&self) -> Result<(), EventError> {
        if self.count as usize >= MAX_BATCH {
            return Err(EventError::BatchFull(MAX_BATCH));
        }
        Ok(())
    }

    fn added(&mut self, size: usize) {
        self.count += 1;
        self.largest = self.largest.max(size);
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded size of the largest event (what must fit in a datagram).
    pub fn largest(&self) -> usize {
        self.largest
    }

    /// Empties the batch, keeping its buffer when nothing else shares it.
    pub fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
        self.largest = 0;
    }

    /// The events, shared; the batch is left empty (its remaining room is
    /// kept for the next events).
    pub fn take(&mut self) -> Events {
        let events = Events {
            bytes: self.bytes.split().freeze(),
            count: self.count,
            lens: None,
        };
        self.count = 0;
        self.largest = 0;
        events
    }
}

/// Events in one [`EventBatch`]: what a node takes in one turn while it
/// still takes publishes (65,536 unsent events).
pub const MAX_BATCH: usize = 65_536;

/// The events of an [`Events`], in order.
pub struct EventsIter<'a> {
    bytes: &'a Bytes,
    at: usize,
    left: u32,
    lens: Option<&'a Lens>,
    /// Events returned so far.
    taken: u32,
}

impl EventsIter<'_> {
    /// Where the next event's bytes start and end.
    fn next_span(&mut self) -> Option<(usize, usize)> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let i = self.taken;
        self.taken += 1;
        let start = self.at;
        let end = match self.lens.and_then(|l| l.get(i)) {
            Some(len) => start + len,
            None => {
                let rest = self.bytes.get(start..)?;
                let mut r = Reader(rest, Utf8::Checked);
                let mut invalid = None;
                // Checked when the run was built: this walk cannot fail.
                let walked = read_event(&mut r, &mut invalid);
                debug_assert!(
                    walked.is_ok() && invalid.is_none(),
                    "a checked run fails its walk"
                );
                walked.ok()?;
                start + rest.len() - r.0.len()
            }
        };
        if end > self.bytes.len() {
            return None;
        }
        self.at = end;
        Some((start, end))
    }
}

impl Iterator for EventsIter<'_> {
    type Item = EncodedEvent;

    fn next(&mut self) -> Option<EncodedEvent> {
        let (start, end) = self.next_span()?;
        Some(EncodedEvent(self.bytes.slice(start..end)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

/// One event, encoded and checked against the limits: a received one
/// shares the bytes of the datagram it came in (cloning it copies nothing).
/// Read it in place with [`EncodedEvent::view`], or own it with
/// [`EncodedEvent::to_event`].
///
/// Holding a received one keeps its datagram's events (at most one
/// datagram) alive.
#[derive(Clone)]
pub struct EncodedEvent(Bytes);

impl EncodedEvent {
    /// Encodes `event`, checked against the limits (but not against a
    /// datagram size).
    pub fn new(event: &Event) -> Result<EncodedEvent, EventError> {
        validate_event(event)?;
        let mut out = BytesMut::with_capacity(encoded_event_len(event));
        encode_event(event, &mut out);
        Ok(EncodedEvent(out.freeze()))
    }

    /// The event, borrowed from its bytes: no allocation.
    pub fn view(&self) -> EventRef<'_> {
        view_checked(&self.0)
    }

    /// The event, owned.
    pub fn to_event(&self) -> Event {
        self.view().to_event()
    }

    /// Its encoding, as it appears inside a datagram.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for EncodedEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.to_event().fmt(f)
    }
}

impl PartialEq for EncodedEvent {
    fn eq(&self, other: &EncodedEvent) -> bool {
        self.view() == other.view()
    }
}

impl Eq for EncodedEvent {}

impl PartialEq<Event> for EncodedEvent {
    fn eq(&self, other: &Event) -> bool {
        self.view().eq_event(other)
    }
}

/// An event read in place, borrowing its bytes: [`Event`] without the
/// allocations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRef<'a> {
    /// Drop these keys.
    Invalidate { keys: Keys<'a> },
    /// Drop every key starting with `prefix`.
    InvalidatePrefix { prefix: &'a str },
    /// Drop everything.
    ClearAll,
    /// Application-defined message.
    Custom { topic: &'a str, payload: &'a [u8] },
}

impl EventRef<'_> {
    /// The event, owned.
    pub fn to_event(&self) -> Event {
        match self {
            EventRef::Invalidate { keys } => Event::Invalidate {
                keys: keys.clone().map(str::to_owned).collect(),
            },
            EventRef::InvalidatePrefix { prefix } => Event::InvalidatePrefix {
                prefix: (*prefix).to_owned(),
            },
            EventRef::ClearAll => Event::ClearAll,
            EventRef::Custom { topic, payload } => Event::Custom {
                topic: (*topic).to_owned(),
                payload: payload.to_vec(),
            },
        }
    }

    fn eq_event(&self, event: &Event) -> bool {
        match (self, event) {
            (EventRef::Invalidate { keys: a }, Event::Invalidate { keys: b }) => {
                a.len() == b.len() && a.clone().zip(b).all(|(a, b)| a == b)
            }
            (EventRef::InvalidatePrefix { prefix: a }, Event::InvalidatePrefix { prefix: b }) => {
                a == b
            }
            (EventRef::ClearAll, Event::ClearAll) => true,
            (
                EventRef::Custom {
                    topic: a,
                    payload: p,
                },
                Event::Custom {
                    topic: b,
                    payload: q,
                },
            ) => a == b && p == q,
            _ => false,
        }
    }
}

/// The event encoded in `bytes`, which were checked when built or decoded.
fn view_checked(bytes: &[u8]) -> EventRef<'_> {
    let mut r = Reader(bytes, Utf8::Checked);
    // The common event in one step: its keys are read as they are
    // iterated, so they need no walk here.
    if r.0.first() == Some(&0) {
        r.0 = &r.0[1..];
        if let Ok(count) = r.varint() {
            return EventRef::Invalidate {
                keys: Keys {
                    rest: r.0,
                    left: count as u32,
                },
            };
        }
    }
    let mut r = Reader(bytes, Utf8::Checked);
    let mut invalid = None;
    // Checked already, so this cannot fail; were it to, clearing
    // everything is the answer that never leaves stale data.
    let walked = read_event(&mut r, &mut invalid);
    debug_assert!(walked.is_ok(), "a checked event fails its walk");
    walked.unwrap_or(EventRef::ClearAll)
}

/// The events of an [`Events`], read in place ([`Events::views`]).
pub struct EventViews<'a> {
    it: EventsIter<'a>,
}

impl<'a> Iterator for EventViews<'a> {
    type Item = EventRef<'a>;

    fn next(&mut self) -> Option<EventRef<'a>> {
        let bytes: &'a [u8] = self.it.bytes;
        let (start, end) = self.it.next_span()?;
        Some(view_checked(&bytes[start..end]))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.it.size_hint()
    }
}

impl ExactSizeIterator for EventViews<'_> {}

/// The keys of an [`EventRef::Invalidate`], borrowed, in order.
#[derive(Clone)]
pub struct Keys<'a> {
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut r = Reader(self.rest, Utf8::Checked);
        // Checked when the event was built or decoded.
        let key = r.str().ok()?;
        self.rest = r.0;
        Some(key)
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.left as usize, Some(self.left as usize))
    }
}

impl ExactSizeIterator for Keys<'_> {}

impl fmt::Debug for Keys<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.clone()).finish()
    }
}

impl PartialEq for Keys<'_> {
    fn eq(&self, other: &Keys<'_>) -> bool {
        self.left == other.left && self.clone().eq(other.clone())
    }
}

impl Eq for Keys<'_> {}

/// Reads one event at `r`. A structural fault (truncated, a bad varint, a
/// bad variant, not UTF-8, a count over its limit) is an error at once; a
/// semantic one (no keys, a key too long) is noted in `invalid` (the first
/// one only) and reading goes on.
#[inline]
fn read_event<'a>(
    r: &mut Reader<'a>,
    invalid: &mut Option<&'static str>,
) -> Result<EventRef<'a>, DecodeError> {
    let mut note = |reason| {
        invalid.get_or_insert(reason);
    };
    let mut text = |r: &mut Reader<'a>| {
        let s = r.str()?;
        if s.len() > MAX_KEY_LEN {
            note("key too long");
        }
        Ok::<_, DecodeError>(s)
    };
    Ok(match r.varint_u32()? {
        0 => {
            let count = r.varint()?;
            if count > MAX_KEYS as u64 {
                return Err(DecodeError::Invalid(TOO_MANY_KEYS));
            }
            let start = r.0;
            for _ in 0..count {
                text(r)?;
            }
            if count == 0 {
                invalid.get_or_insert("no keys");
            }
            EventRef::Invalidate {
                keys: Keys {
                    rest: start,
                    left: count as u32,
                },
            }
        }
        1 => EventRef::InvalidatePrefix { prefix: text(r)? },
        2 => EventRef::ClearAll,
        3 => {
            let topic = text(r)?;
            let len = r.varint()?;
            if len > MAX_DATAGRAM as u64 {
                return Err(DecodeError::Invalid(PAYLOAD_TOO_LONG));
            }
            EventRef::Custom {
                topic,
                payload: r.take(len)?,
            }
        }
        tag => return Err(DecodeError::Malformed(format!("unknown event type {tag}"))),
    })
}

/// bincode 2's varint (standard config), by hand: below 251 one byte; else a
/// marker (251, 252, 253) and a u16, u32 or u64, little-endian.
fn put_varint(out: &mut impl BufMut, v: u64) {
    if v < 251 {
        out.put_u8(v as u8);
    } else if v <= u64::from(u16::MAX) {
        out.put_u8(251);
        out.put_u16_le(v as u16);
    } else if v <= u64::from(u32::MAX) {
        out.put_u8(252);
        out.put_u32_le(v as u32);
    } else {
        out.put_u8(253);
        out.put_u64_le(v);
    }
}

fn varint_len(v: u64) -> usize {
    match v {
        0..=250 => 1,
        251..=0xffff => 3,
        0x1_0000..=0xffff_ffff => 5,
        _ => 9,
    }
}

/// A length-prefixed string or byte string.
fn put_field(out: &mut impl BufMut, bytes: &[u8]) {
    put_varint(out, bytes.len() as u64);
    out.put_slice(bytes);
}

/// Reads received bytes: every read is checked, none panics or allocates.
struct Reader<'a>(&'a [u8], Utf8);

/// Whether the strings a [`Reader`] reads still need their UTF-8 checked.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Utf8 {
    /// Received bytes: check.
    Check,
    /// The bytes of an [`Events`] or [`EncodedEvent`], read again: every
    /// one of them was encoded from a `&str` or decoded with `Check`. A
    /// read starts at an event's first byte (a run's start, the end the
    /// checking walk found for the one before, or a length it recorded,
    /// `Lens`), and reads an event the same way the checking walk did, so
    /// every string it finds is one that walk checked.
    Checked,
}

impl<'a> Reader<'a> {
    #[inline]
    fn take(&mut self, n: u64) -> Result<&'a [u8], DecodeError> {
        let n = usize::try_from(n).ok().filter(|&n| n <= self.0.len());
        let n = n.ok_or_else(|| DecodeError::Malformed("truncated".into()))?;
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    #[inline]
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N as u64)?;
        Ok(bytes.try_into().unwrap_or([0; N]))
    }

    /// A varint for a u64 (what bincode accepts: any of the four widths).
    /// The one-byte form (counts, lengths, tags) is read inline; the rest
    /// out of line.
    #[inline(always)]
    fn varint(&mut self) -> Result<u64, DecodeError> {
        match self.0.split_first() {
            Some((&b, rest)) if b <= 250 => {
                self.0 = rest;
                Ok(u64::from(b))
            }
            _ => self.varint_wide(),
        }
    }

    #[cold]
    #[inline(never)]
    fn varint_wide(&mut self) -> Result<u64, DecodeError> {
        let [marker] = self.array::<1>()?;
        Ok(match marker {
            // One byte: by far the most common (counts, lengths, tags).
            b @ 0..=250 => u64::from(b),
            251 => u64::from(u16::from_le_bytes(self.array()?)),
            252 => u64::from(u32::from_le_bytes(self.array()?)),
            253 => u64::from_le_bytes(self.array()?),
            b => return Err(DecodeError::Malformed(format!("bad varint marker {b:#x}"))),
        })
    }

    /// A varint for a u32 (a variant index): the u64 width is refused.
    #[inline]
    fn varint_u32(&mut self) -> Result<u32, DecodeError> {
        if self.0.first() == Some(&253) {
            return Err(DecodeError::Malformed("variant index over u32".into()));
        }
        Ok(self.varint()? as u32)
    }

    /// A length-prefixed UTF-8 string.
    #[inline]
    fn str(&mut self) -> Result<&'a str, DecodeError> {
        let len = self.varint()?;
        let bytes = self.take(len)?;
        match self.1 {
            Utf8::Check => {
                std::str::from_utf8(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
            }
            // SAFETY: see `Utf8::Checked`: these exact bytes were checked
            // (or written from a `&str`) when the events were built, and
            // this read starts where that walk started an event and follows
            // it. Checking again would cost the receive path a third of its
            // time.
            Utf8::Checked => Ok(unsafe { std::str::from_utf8_unchecked(bytes) }),
        }
    }
}

// Reasons for counts over their limits (the same whether read by hand or
// by the bounded visitor).
const TOO_MANY_EVENTS: &str = "too many events";
const TOO_MANY_KEYS: &str = "too many keys";
const BAD_RANGE_COUNT: &str = "bad range count";
const PAYLOAD_TOO_LONG: &str = "payload too long";

// Bounded sequences: serde's own `Vec` visitor preallocates up to 1 MiB for
// any claimed length, so a 20-byte datagram could cost 1 MiB. The ranges of
// `Nak` and `Unavailable` decode through this instead (their encoding is a
// plain `Vec`'s).
/// Elements preallocated for a sequence, whatever length it claims.
const PREALLOC: usize = 64;

fn ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SeqRange>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_RANGES, BAD_RANGE_COUNT, PhantomData))
}

/// Maps a bincode error to a [`DecodeError`]: a bounded sequence over its
/// limit is `Invalid` with the same reason validation would give, anything
/// else is `Malformed`.
fn malformed(e: bincode::error::DecodeError) -> DecodeError {
    if let bincode::error::DecodeError::OtherString(msg) = &e {
        if msg == BAD_RANGE_COUNT {
            return DecodeError::Invalid(BAD_RANGE_COUNT);
        }
    }
    DecodeError::Malformed(e.to_string())
}

/// A visitor for a sequence of at most `.0` elements, failing with message
/// `.1` on more. A claimed length over the limit is rejected before anything
/// is allocated, and at most [`PREALLOC`] elements are allocated ahead of the
/// bytes that back them.
struct BoundedSeq<T>(usize, &'static str, PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for BoundedSeq<T> {
    type Value = Vec<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        write!(f, "a sequence of at most {} elements", self.0)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
        let BoundedSeq(max, over, _) = self;
        let claimed = seq.size_hint().unwrap_or(0);
        if claimed > max {
            return Err(de::Error::custom(over));
        }
        let mut out = Vec::with_capacity(claimed.min(PREALLOC));
        while let Some(element) = seq.next_element()? {
            if out.len() == max {
                return Err(de::Error::custom(over));
            }
            out.push(element);
        }
        Ok(out)
    }
}
