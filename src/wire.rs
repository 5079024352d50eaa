//! Wire format, version 1: every byte cachecast puts on the network.
//!
//! A datagram is a [`Header`] followed by one [`Body`], encoded with bincode 2
//! (standard config: little-endian, variable-length integers). Decoding is
//! hostile-input safe: a size limit bounds every allocation, the header is
//! checked (magic, version, flags, cluster) before the body is decoded,
//! trailing bytes are rejected, and every count and length is checked
//! against the limits below. Nothing here panics on received bytes.
//!
//! Strings are bounded by bincode's size limit ([`MAX_DATAGRAM`] per
//! datagram); every `Vec` field decodes through a bounded visitor that
//! rejects a claimed length over the field's limit before allocating.
//!
//! This module may not know anything about protocol state: it only turns
//! values into bytes and back. Golden-byte tests pin the format.

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
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Body {
    /// Fresh events: `events[i]` has seq `first_seq + i`.
    Data {
        first_seq: u64,
        #[serde(deserialize_with = "events")]
        events: Vec<Event>,
    },
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
    Nak {
        stream: u64,
        #[serde(deserialize_with = "ranges")]
        ranges: Vec<SeqRange>,
    },
    /// Retransmitted events: `events[i]` has seq `first_seq + i`.
    Repair {
        first_seq: u64,
        #[serde(deserialize_with = "events")]
        events: Vec<Event>,
    },
    /// The sender of `stream` no longer holds these ranges: receivers Reset.
    Unavailable {
        stream: u64,
        #[serde(deserialize_with = "ranges")]
        ranges: Vec<SeqRange>,
    },
    /// Clean end of the stream; everything below `next_seq` was sent.
    Goodbye { next_seq: u64 },
}

/// One invalidation.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Event {
    /// Drop these keys.
    Invalidate {
        #[serde(deserialize_with = "keys")]
        keys: Vec<String>,
    },
    /// Drop every key starting with `prefix`.
    InvalidatePrefix { prefix: String },
    /// Drop everything.
    ClearAll,
    /// Application-defined message.
    Custom {
        topic: String,
        #[serde(deserialize_with = "payload")]
        payload: Vec<u8>,
    },
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
    // Writing into a Vec cannot fail, and every value here is encodable.
    bincode::serde::encode_into_std_write((header, body), buf, config())
        .expect("encoding into a Vec cannot fail");
}

/// The number of bytes `event` takes inside a datagram.
pub fn encoded_event_len(event: &Event) -> usize {
    let mut w = bincode::enc::write::SizeWriter::default();
    bincode::serde::encode_into_writer(event, &mut w, config()).expect("size of an event");
    w.bytes_written
}

/// Checks an event against the limits and `max_datagram`, before it is
/// published. Returns its encoded length.
pub fn check_event(event: &Event, max_datagram: usize) -> Result<usize, EventError> {
    validate_event(event)?;
    let size = encoded_event_len(event);
    if size + DATA_OVERHEAD > max_datagram {
        return Err(EventError::TooLarge { size, max_datagram });
    }
    Ok(size)
}

/// Checks `event` like [`check_event`] and appends its encoding to `out`
/// in the same pass; returns its length. On error `out` is unchanged.
pub fn encode_checked(
    event: &Event,
    max_datagram: usize,
    out: &mut Vec<u8>,
) -> Result<usize, EventError> {
    validate_event(event)?;
    let before = out.len();
    let size = encode_event(event, out);
    if size + DATA_OVERHEAD > max_datagram {
        out.truncate(before);
        return Err(EventError::TooLarge { size, max_datagram });
    }
    Ok(size)
}

fn validate_event(event: &Event) -> Result<(), EventError> {
    let check = |s: &str| {
        if s.len() > MAX_KEY_LEN {
            Err(EventError::KeyTooLong(s.len()))
        } else {
            Ok(())
        }
    };
    match event {
        Event::Invalidate { keys } => {
            if keys.is_empty() {
                return Err(EventError::NoKeys);
            }
            if keys.len() > MAX_KEYS {
                return Err(EventError::TooManyKeys(keys.len()));
            }
            keys.iter().try_for_each(|k| check(k))
        }
        Event::InvalidatePrefix { prefix } => check(prefix),
        Event::ClearAll => Ok(()),
        Event::Custom { topic, .. } => check(topic),
    }
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

/// Decodes and validates the body that follows a header.
pub fn decode_body(rest: &[u8]) -> Result<Body, DecodeError> {
    let (body, used): (Body, usize) =
        bincode::serde::decode_from_slice(rest, config()).map_err(malformed)?;
    if used != rest.len() {
        return Err(DecodeError::TrailingBytes(rest.len() - used));
    }
    validate_body(&body)?;
    Ok(body)
}

/// Appends the encoding of `event` to `out` (as it appears inside a `Data`
/// or `Repair` body) and returns its length.
pub fn encode_event(event: &Event, out: &mut Vec<u8>) -> usize {
    let before = out.len();
    bincode::serde::encode_into_std_write(event, out, config())
        .expect("encoding into a Vec cannot fail");
    out.len() - before
}

/// Decodes one event encoded by [`encode_event`] (exactly `bytes`).
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let (event, used): (Event, usize) =
        bincode::serde::decode_from_slice(bytes, config()).map_err(malformed)?;
    if used != bytes.len() {
        return Err(DecodeError::TrailingBytes(bytes.len() - used));
    }
    validate_event(&event).map_err(|_| DecodeError::Invalid("bad event"))?;
    Ok(event)
}

fn seq_ok(seq: u64) -> bool {
    (1..MAX_SEQ).contains(&seq)
}

fn validate_events(first_seq: u64, events: &[Event]) -> Result<(), DecodeError> {
    if events.is_empty() {
        return Err(DecodeError::Invalid("no events"));
    }
    if events.len() > MAX_EVENTS {
        return Err(DecodeError::Invalid(TOO_MANY_EVENTS));
    }
    if !seq_ok(first_seq) || first_seq + events.len() as u64 > MAX_SEQ {
        return Err(DecodeError::Invalid("sequence number out of range"));
    }
    for e in events {
        validate_event(e).map_err(|e| {
            DecodeError::Invalid(match e {
                EventError::TooManyKeys(_) => TOO_MANY_KEYS,
                EventError::NoKeys => "no keys",
                _ => "key too long",
            })
        })?;
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

// Bounded sequences: serde's own `Vec` visitor preallocates up to 1 MiB for
// any claimed length, so a 20-byte datagram could cost 1 MiB. Each `Vec`
// field decodes through these instead (its encoding is a plain `Vec`'s).

const TOO_MANY_EVENTS: &str = "too many events";
const TOO_MANY_KEYS: &str = "too many keys";
const BAD_RANGE_COUNT: &str = "bad range count";
const PAYLOAD_TOO_LONG: &str = "payload too long";
/// Elements preallocated for a sequence, whatever length it claims.
const PREALLOC: usize = 64;

fn events<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_EVENTS, TOO_MANY_EVENTS, PhantomData))
}

fn keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_KEYS, TOO_MANY_KEYS, PhantomData))
}

fn ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SeqRange>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_RANGES, BAD_RANGE_COUNT, PhantomData))
}

fn payload<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_DATAGRAM, PAYLOAD_TOO_LONG, PhantomData))
}

/// Maps a bincode error to a [`DecodeError`]: a bounded sequence over its
/// limit is `Invalid` with the same reason validation would give, anything
/// else is `Malformed`.
fn malformed(e: bincode::error::DecodeError) -> DecodeError {
    if let bincode::error::DecodeError::OtherString(msg) = &e {
        let limits = [
            TOO_MANY_EVENTS,
            TOO_MANY_KEYS,
            BAD_RANGE_COUNT,
            PAYLOAD_TOO_LONG,
        ];
        if let Some(reason) = limits.into_iter().find(|r| r == msg) {
            return DecodeError::Invalid(reason);
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
