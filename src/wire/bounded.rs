//! Bounded sequences for serde: its own `Vec` visitor preallocates up to
//! 1 MiB for any claimed length, so a 20-byte datagram could cost 1 MiB.
//! Every sequence of the format that is decoded through serde (the ranges of
//! `Nak` and `Unavailable`; the definition's events, keys and payloads) goes
//! through [`BoundedSeq`] instead, whose encoding is a plain `Vec`'s.

use std::{fmt, marker::PhantomData};

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

use super::{
    Event, Position, SeqRange, BAD_RANGE_COUNT, MAX_ACK_MEMBERS, MAX_DATAGRAM, MAX_EVENTS,
    MAX_KEYS, MAX_POSITIONS, MAX_RANGES, MAX_REPORT_KEYS, PAYLOAD_TOO_LONG, TOO_MANY_EVENTS,
    TOO_MANY_KEYS, TOO_MANY_KEY_IDS, TOO_MANY_MEMBERS, TOO_MANY_POSITIONS,
};

/// Elements preallocated for a sequence, whatever length it claims.
const PREALLOC: usize = 64;

/// The ranges of `Nak` and `Unavailable`: at most [`MAX_RANGES`].
pub(super) fn ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<SeqRange>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_RANGES, BAD_RANGE_COUNT, PhantomData))
}

/// The members of an `AckRequest`: at most [`MAX_ACK_MEMBERS`].
pub(super) fn members<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u64>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_ACK_MEMBERS, TOO_MANY_MEMBERS, PhantomData))
}

/// The positions of a `Report`: at most [`MAX_POSITIONS`].
pub(super) fn positions<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Position>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_POSITIONS, TOO_MANY_POSITIONS, PhantomData))
}

/// The key ids of a `Report`: at most [`MAX_REPORT_KEYS`].
pub(super) fn key_ids<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u32>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_REPORT_KEYS, TOO_MANY_KEY_IDS, PhantomData))
}

/// The keys of an `Invalidate`: at most [`MAX_KEYS`].
pub(super) fn keys<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_KEYS, TOO_MANY_KEYS, PhantomData))
}

/// The payload of a `Custom` event: at most [`MAX_DATAGRAM`] bytes.
pub(super) fn payload<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_DATAGRAM, PAYLOAD_TOO_LONG, PhantomData))
}

/// The events of a `Data` or `Repair` body: at most [`MAX_EVENTS`].
pub(super) fn events<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Event>, D::Error> {
    d.deserialize_seq(BoundedSeq(MAX_EVENTS, TOO_MANY_EVENTS, PhantomData))
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
