//! What a datagram says: the bodies, their serde definition, and the encoding
//! and decoding of whole datagrams. Control bodies go through serde and
//! bincode; the events of `Data` and `Repair` through the hand-written run
//! (`run`), framed here by hand: tag, `first_seq`, count, events.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::header::{decode_header, Header};
use super::varint::{put_varint, Reader};
use super::{
    config, malformed, put, DecodeError, Event, Events, SeqRange, BAD_RANGE_COUNT, MAX_DATAGRAM,
    MAX_NODE_NAME, MAX_RANGES, MAX_SEQ,
};

tagged! {
    /// What a datagram says.
    ///
    /// Its serde derive is the format's definition of a body (bincode 2,
    /// standard config), where [`Events`] are a `Vec<Event>`. The node
    /// encodes and decodes the events of `Data` and `Repair` by hand
    /// ([`encode`], [`decode_body`]): the same bytes, checked against this
    /// definition by tests.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub enum Body, tags BodyTag {
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
        Nak {
            stream: u64,
            #[serde(deserialize_with = "crate::wire::bounded::ranges")]
            ranges: Vec<SeqRange>,
        },
        /// Retransmitted events: the `i`th of `events` has seq `first_seq + i`.
        Repair { first_seq: u64, events: Events },
        /// The sender of `stream` no longer holds these ranges: receivers Reset.
        Unavailable {
            stream: u64,
            #[serde(deserialize_with = "crate::wire::bounded::ranges")]
            ranges: Vec<SeqRange>,
        },
        /// Clean end of the stream; everything below `next_seq` was sent.
        Goodbye { next_seq: u64 },
        /// "Acknowledge, please": a heartbeat (everything below `next_seq`
        /// was sent) that asks each member listed in `members` by stream id
        /// (every member, when empty) to answer with a `Report` once it has
        /// delivered everything below `next_seq`, or a `Reset` covered it.
        /// Sent only while the application awaits a confirmation.
        AckRequest {
            next_seq: u64,
            #[serde(deserialize_with = "crate::wire::bounded::members")]
            members: Vec<u64>,
        },
        /// How far the sending node has delivered the streams it follows:
        /// periodically (what changed), and in answer to an `AckRequest`.
        Report {
            node: String,
            #[serde(deserialize_with = "crate::wire::bounded::positions")]
            positions: Vec<Position>,
            /// The ids of the keys the node holds, the one it sends with
            /// first (empty without keys), so that the membership view
            /// shows when every member is ready for a key rotation's next
            /// step.
            #[serde(deserialize_with = "crate::wire::bounded::key_ids")]
            keys: Vec<u32>,
        },
    }
}

/// How far a node has delivered one stream (an entry of a `Report`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Position {
    /// The stream.
    pub stream: u64,
    /// Every seq of the stream below this was delivered, or covered by a
    /// `Reset` (at least 1).
    pub delivered: u64,
    /// One past the highest seq of the stream given up with a `Reset`
    /// rather than delivered; 0 if none. At most `delivered`.
    pub reset_end: u64,
    /// How long ago, in milliseconds, the reporting node last heard the
    /// stream (for a stream that ended: heard its end). A node that joined
    /// after that needs none of it.
    pub idle_ms: u64,
}

/// A decoded datagram. Its serde derive (bincode 2, standard config) is the
/// definition of the format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Datagram {
    /// The fixed part.
    pub header: Header,
    /// What it says.
    pub body: Body,
}

/// In the definition, events are a `Vec<Event>`. This is the slow path
/// (each event is owned on the way): the node never takes it, it writes
/// the same bytes by hand ([`encode`]).
impl Serialize for Events {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.iter().map(|e| e.to_event()))
    }
}

/// In the definition, events are a `Vec<Event>` (at most
/// [`MAX_EVENTS`](super::MAX_EVENTS), each bounded as [`Event`] is). This is
/// the slow path: the node reads the same bytes by hand ([`decode_body`]).
/// Limits other than counts are left to [`decode`]'s validation, as for
/// every body.
impl<'de> Deserialize<'de> for Events {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Events, D::Error> {
        let events: Vec<Event> = super::bounded::events(d)?;
        Ok(Events::new_unchecked(&events))
    }
}

/// Encodes `header` and `body` into `buf`, replacing its contents.
pub fn encode(header: &Header, body: &Body, buf: &mut Vec<u8>) {
    buf.clear();
    put(buf, header);
    match body {
        // The hot path, by hand: what serde would write for the variant,
        // with the events copied as they are (already encoded).
        Body::Data { first_seq, events } | Body::Repair { first_seq, events } => {
            put_varint(buf, body.tag() as u64);
            put_varint(buf, *first_seq);
            put_varint(buf, events.len() as u64);
            buf.extend_from_slice(events.as_bytes());
        }
        // Control bodies: the definition itself.
        _ => put(buf, body),
    }
}

/// Decodes and validates one received datagram of cluster `cluster`.
///
/// An authenticated datagram's trailer is checked for its form only (its
/// length and algorithm), **not verified**: the node verifies it
/// (`proto::auth`); this is for tools and tests that read traffic. An
/// encrypted body cannot be decoded without the key.
pub fn decode(bytes: &[u8], cluster: u32) -> Result<Datagram, DecodeError> {
    let (header, used) = decode_header(bytes, cluster)?;
    let end = if header.authenticated() {
        let (trailer, _) = super::Trailer::read(bytes, used)
            .map_err(|_| DecodeError::Invalid("bad authentication trailer"))?;
        if trailer.algorithm != super::Algorithm::HmacSha256 {
            return Err(DecodeError::Invalid("encrypted body"));
        }
        bytes.len() - super::TRAILER_LEN
    } else {
        bytes.len()
    };
    let body = decode_body(&bytes[used..end])?;
    Ok(Datagram { header, body })
}

/// Decodes and validates the body that follows a header. The events of a
/// `Data` or `Repair` body are checked in place and copied once, whole,
/// into the [`Events`] that shares them: no allocation per event.
pub fn decode_body(rest: &[u8]) -> Result<Body, DecodeError> {
    if rest.len() > MAX_DATAGRAM {
        return Err(DecodeError::TooLarge(rest.len()));
    }
    let mut r = Reader(rest);
    let tag = r.varint_u32()?;
    let (body, left) = match BodyTag::from_u32(tag) {
        Some(tag @ (BodyTag::Data | BodyTag::Repair)) => {
            let first_seq = r.varint()?;
            let events = Events::decode(&mut r)?;
            let body = if tag == BodyTag::Data {
                Body::Data { first_seq, events }
            } else {
                Body::Repair { first_seq, events }
            };
            (body, r.0.len())
        }
        // Control bodies: the definition itself, from the tag on.
        Some(tag) => match bincode::serde::decode_from_slice::<Body, _>(rest, config()) {
            Ok((body, used)) => (body, rest.len() - used),
            // A `Report` of a build from before key ids (the same fields,
            // less the last): read as holding no key, so that a rolling
            // upgrade keeps every member's positions.
            Err(e) => match (tag == BodyTag::Report)
                .then(|| legacy_report(r.0))
                .flatten()
            {
                Some(body) => (body, 0),
                None => return Err(malformed(e)),
            },
        },
        None => return Err(DecodeError::Malformed(format!("unknown body type {tag}"))),
    };
    if left != 0 {
        return Err(DecodeError::TrailingBytes(left));
    }
    validate_body(&body)?;
    Ok(body)
}

/// A `Report` without its `keys` (builds before authentication), if `after_tag`
/// is exactly one.
fn legacy_report(after_tag: &[u8]) -> Option<Body> {
    #[derive(Deserialize)]
    struct Legacy {
        node: String,
        #[serde(deserialize_with = "crate::wire::bounded::positions")]
        positions: Vec<Position>,
    }
    let (l, used): (Legacy, usize) = bincode::serde::decode_from_slice(after_tag, config()).ok()?;
    (used == after_tag.len()).then_some(Body::Report {
        node: l.node,
        positions: l.positions,
        keys: Vec::new(),
    })
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
        Body::AckRequest { next_seq, members } => {
            if !seq_ok(*next_seq) {
                return Err(DecodeError::Invalid("bad ack request position"));
            }
            if members.contains(&0) {
                return Err(DecodeError::Invalid("stream id 0"));
            }
            Ok(())
        }
        Body::Report {
            node, positions, ..
        } => {
            validate_name(node)?;
            for p in positions {
                if p.stream == 0 || !seq_ok(p.delivered) || p.reset_end > p.delivered {
                    return Err(DecodeError::Invalid("bad position"));
                }
            }
            Ok(())
        }
    }
}
