//! The event run: the events of a `Data` or `Repair` body, written and read
//! by hand in the bytes bincode writes for `Vec<Event>` after its count
//! (each event: its [`EventTag`], then its fields). A received run is checked
//! once, by a walk that also records each event's length, and is then read in
//! place and shared ([`Events`], [`EncodedEvent`], [`EventRef`]), never copied
//! into an owned value unless asked for.
//!
//! # The one shortcut
//!
//! Reading a run again does not check its strings as UTF-8 again (that would
//! cost the receive path a third of its time). This module is the only one
//! that can do that, and the only one that can make the values it does it
//! for. A *checked run* is bytes made only of whole events, each of them
//! either accepted by [`walk_event`] (which checks every string as UTF-8) or
//! written by [`encode_event`] / `put_invalidate` (every string from a
//! `&str`). A read that starts at the first byte of one of its events reads
//! that event exactly as the walk or the writer laid it out (one grammar:
//! `read_event` over `Reader`, `put_varint`/`put_field`), so every string it
//! finds was checked or written from a `&str`. Each type below that is read
//! again states what it holds:
//!
//! - [`Events`]: `bytes` is a checked run of `count` events; `lens`, when
//!   known, the exact length of each, in order. Made by [`Events::decode`]
//!   and [`Events::from_bytes`] (walks) and by [`RunBuf`] (the writer), and
//!   only shortened at event boundaries.
//! - [`EncodedEvent`]: exactly one event of a checked run. Made by
//!   [`EncodedEvent::new`] (the writer) and cut from an [`Events`] at the
//!   boundaries its iterator finds.
//! - [`Keys`]: starts at the first of `left` keys of an `Invalidate` of a
//!   checked run. Made by `read_event` and `view_event` only.

use std::fmt;
use std::sync::Arc;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::event::validate_event;
use super::varint::{put_field, put_varint, varint_len, Reader};
use super::{
    DecodeError, Event, EventError, EventTag, MAX_DATAGRAM, MAX_EVENTS, MAX_KEYS, MAX_KEY_LEN,
    PAYLOAD_TOO_LONG, TOO_MANY_EVENTS, TOO_MANY_KEYS,
};

// ---------------------------------------------------------------------------
// Writing. Every tag is a one-byte varint (`tagged!` asserts it), so it is
// written as a byte.

/// Appends the encoding of `event` to `out` (as it appears inside a `Data`
/// or `Repair` body) and returns its length.
pub fn encode_event(event: &Event, out: &mut impl BufMut) -> usize {
    match event {
        Event::Invalidate { keys } => put_invalidate(out, keys.iter().map(String::as_str)),
        Event::InvalidatePrefix { prefix } => {
            out.put_u8(EventTag::InvalidatePrefix as u8);
            put_field(out, prefix.as_bytes());
        }
        Event::ClearAll => out.put_u8(EventTag::ClearAll as u8),
        Event::Custom { topic, payload } => {
            out.put_u8(EventTag::Custom as u8);
            put_field(out, topic.as_bytes());
            put_field(out, payload);
        }
    }
    encoded_event_len(event)
}

/// Appends `Invalidate { keys }`.
#[inline]
fn put_invalidate<'a>(out: &mut impl BufMut, keys: impl ExactSizeIterator<Item = &'a str>) {
    out.put_u8(EventTag::Invalidate as u8);
    put_varint(out, keys.len() as u64);
    for k in keys {
        put_field(out, k.as_bytes());
    }
}

/// The number of bytes `event` takes inside a datagram: what
/// [`encode_event`] writes.
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

/// Events encoded back to back, to become an [`Events`]: bytes are only
/// ever added by the writer (from an [`Event`] or `&str` keys) or copied
/// from an [`EncodedEvent`], so what it holds is always a checked run. No
/// limits are checked here: that is the caller's (`EventBatch`, the sender).
#[derive(Debug, Clone, Default)]
pub(crate) struct RunBuf {
    bytes: BytesMut,
    count: u32,
}

impl RunBuf {
    /// An empty run with room for `bytes` of encoded events.
    pub(crate) fn with_capacity(bytes: usize) -> RunBuf {
        RunBuf {
            bytes: BytesMut::with_capacity(bytes),
            count: 0,
        }
    }

    /// Appends `event`; returns its encoded size.
    #[inline]
    pub(crate) fn push(&mut self, event: &Event) -> usize {
        let size = encode_event(event, &mut self.bytes);
        self.count += 1;
        size
    }

    /// Appends `Invalidate { keys }`; returns its encoded size.
    #[inline]
    pub(crate) fn push_keys<'a>(&mut self, keys: impl ExactSizeIterator<Item = &'a str>) -> usize {
        let start = self.bytes.len();
        put_invalidate(&mut self.bytes, keys);
        self.count += 1;
        self.bytes.len() - start
    }

    /// Appends a copy of `event`; returns its encoded size.
    #[inline]
    pub(crate) fn push_encoded(&mut self, event: &EncodedEvent) -> usize {
        self.bytes.extend_from_slice(&event.0);
        self.count += 1;
        event.0.len()
    }

    /// The number of events.
    pub(crate) fn len(&self) -> usize {
        self.count as usize
    }

    /// True when there are none.
    pub(crate) fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The encoded events, back to back.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Bytes that can be added without allocating.
    pub(crate) fn spare(&self) -> usize {
        self.bytes.capacity() - self.bytes.len()
    }

    /// Makes room for at least `additional` more bytes.
    pub(crate) fn reserve(&mut self, additional: usize) {
        self.bytes.reserve(additional);
    }

    /// Empties the run, keeping its buffer when nothing else shares it.
    pub(crate) fn clear(&mut self) {
        self.bytes.clear();
        self.count = 0;
    }

    /// The events, shared; the run is left empty (its remaining room is
    /// kept for the next events).
    pub(crate) fn take(&mut self) -> Events {
        Events {
            bytes: self.bytes.split().freeze(),
            count: std::mem::take(&mut self.count),
            lens: None,
        }
    }
}

// ---------------------------------------------------------------------------
// Reading: the one walk, validating received bytes or trusting a checked
// run read again.

/// How [`read_event`] turns the bytes of a string into a `&str`.
trait Text {
    /// The string in `bytes`.
    ///
    /// # Safety
    ///
    /// For [`Trusted`], `bytes` must be valid UTF-8. [`Validate`] has no
    /// condition.
    unsafe fn text(bytes: &[u8]) -> Result<&str, DecodeError>;
}

/// Received bytes: every string is checked.
enum Validate {}

impl Text for Validate {
    #[inline]
    unsafe fn text(bytes: &[u8]) -> Result<&str, DecodeError> {
        std::str::from_utf8(bytes).map_err(|e| DecodeError::Malformed(e.to_string()))
    }
}

/// A checked run read again: its strings were checked, or written from
/// `&str`s, when the run was made.
enum Trusted {}

impl Text for Trusted {
    #[inline]
    unsafe fn text(bytes: &[u8]) -> Result<&str, DecodeError> {
        // SAFETY: the caller guarantees `bytes` is valid UTF-8 (this
        // method's contract).
        Ok(unsafe { std::str::from_utf8_unchecked(bytes) })
    }
}

/// Reads one event at `r`. A structural fault (truncated, a bad varint, an
/// unknown tag, not UTF-8, a count over its limit) is an error at once; a
/// semantic one (no keys, a key too long) is noted in `invalid` (the first
/// one only) and reading goes on.
///
/// # Safety
///
/// With `T` = [`Trusted`]: `r` must start at the first byte of an event of a
/// checked run (see the module's docs) and hold only bytes of that run from
/// there on. With [`Validate`], none.
#[inline]
unsafe fn read_event<'a, T: Text>(
    r: &mut Reader<'a>,
    invalid: &mut Option<&'static str>,
) -> Result<EventRef<'a>, DecodeError> {
    let mut note = |reason| {
        invalid.get_or_insert(reason);
    };
    let mut text = |r: &mut Reader<'a>| {
        let bytes = r.field()?;
        // SAFETY: with `Trusted`, this read started at an event's first byte
        // in a checked run and follows the grammar that checked or wrote
        // it, so `bytes` is a string that was checked or written from a
        // `&str`: valid UTF-8.
        let s = unsafe { T::text(bytes) }?;
        if s.len() > MAX_KEY_LEN {
            note("key too long");
        }
        Ok::<_, DecodeError>(s)
    };
    let tag = r.varint_u32()?;
    Ok(match EventTag::from_u32(tag) {
        Some(EventTag::Invalidate) => {
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
            // Its `count` keys were all read above: checked, or (trusted)
            // of a checked run.
            EventRef::Invalidate {
                keys: Keys {
                    rest: start,
                    left: count as u32,
                },
            }
        }
        Some(EventTag::InvalidatePrefix) => EventRef::InvalidatePrefix { prefix: text(r)? },
        Some(EventTag::ClearAll) => EventRef::ClearAll,
        Some(EventTag::Custom) => {
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
        None => return Err(DecodeError::Malformed(format!("unknown event type {tag}"))),
    })
}

/// Reads one received event at `r`, checking every string: what makes a
/// checked run of received bytes.
#[inline]
fn walk_event<'a>(
    r: &mut Reader<'a>,
    invalid: &mut Option<&'static str>,
) -> Result<EventRef<'a>, DecodeError> {
    // SAFETY: with `Validate`, `read_event` has no condition.
    unsafe { read_event::<Validate>(r, invalid) }
}

/// Reads again the event `bytes` starts with; returns it and its length.
/// `None` only if the run was not a checked one (never).
///
/// # Safety
///
/// `bytes` must start at the first byte of an event of a checked run and
/// hold only bytes of that run from there on.
#[inline]
unsafe fn reread_event(bytes: &[u8]) -> Option<(EventRef<'_>, usize)> {
    let mut r = Reader(bytes);
    let mut invalid = None;
    // SAFETY: this function's contract is `read_event::<Trusted>`'s.
    let walked = unsafe { read_event::<Trusted>(&mut r, &mut invalid) };
    debug_assert!(
        walked.is_ok() && invalid.is_none(),
        "a checked run fails its walk"
    );
    Some((walked.ok()?, bytes.len() - r.0.len()))
}

/// The event `bytes` starts with, read in place.
///
/// # Safety
///
/// As [`reread_event`]'s.
#[inline]
unsafe fn view_event(bytes: &[u8]) -> EventRef<'_> {
    // The common event in one step: its keys are read as they are
    // iterated, so they need no walk here.
    if let Some((&tag, rest)) = bytes.split_first() {
        if u32::from(tag) == EventTag::Invalidate as u32 {
            let mut r = Reader(rest);
            if let Ok(count) = r.varint() {
                // The keys of an Invalidate of a checked run (the contract):
                // `Keys`'s invariant.
                return EventRef::Invalidate {
                    keys: Keys {
                        rest: r.0,
                        left: count as u32,
                    },
                };
            }
        }
    }
    // Checked already, so this cannot fail; were it to, clearing
    // everything is the answer that never leaves stale data.
    // SAFETY: this function's contract is `reread_event`'s.
    unsafe { reread_event(bytes) }.map_or(EventRef::ClearAll, |(event, _)| event)
}

/// Decodes one event encoded by [`encode_event`] (exactly `bytes`).
pub fn decode_event(bytes: &[u8]) -> Result<Event, DecodeError> {
    let mut r = Reader(bytes);
    let mut invalid = None;
    let event = walk_event(&mut r, &mut invalid)?;
    if !r.0.is_empty() {
        return Err(DecodeError::TrailingBytes(r.0.len()));
    }
    if let Some(reason) = invalid {
        return Err(DecodeError::Invalid(reason));
    }
    Ok(event.to_event())
}

// ---------------------------------------------------------------------------
// The run and its views.

/// A run of encoded events: what a `Data` or `Repair` datagram carries.
/// Checked against the limits when built or decoded; cheap to clone (the
/// bytes are shared).
#[derive(Clone, Default)]
pub struct Events {
    /// A checked run of `count` events.
    bytes: Bytes,
    count: u32,
    /// The length of each event still in the run, when known (a received
    /// run: found by the walk that checked it), so that taking events off
    /// needs no second walk. `None` for runs built here.
    lens: Option<Lens>,
}

/// Event lengths, shared by the clones of a run; `next` is the first one
/// still in it. Each is exactly what the checking walk found: the spans
/// they give are the run's events.
#[derive(Clone)]
struct Lens {
    all: Arc<[u32]>,
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

    /// Encodes `events` without checking them against the limits: for tests
    /// that put invalid events on the wire (receivers must reject them).
    /// Only for encoding: reading such a run back is not supported (an
    /// invalid event may end the iteration early).
    #[doc(hidden)]
    pub fn new_unchecked(events: &[Event]) -> Events {
        let mut run = RunBuf::default();
        for e in events {
            run.push(e);
        }
        run.take()
    }

    /// Reads a count and that many received events at `r`, checking each,
    /// and copies them (once, whole) with each one's length.
    pub(super) fn decode(r: &mut Reader<'_>) -> Result<Events, DecodeError> {
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
            walk_event(r, &mut invalid)?;
            // Exact, never cut short: a wrong length would make later
            // reads start inside an event.
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

    /// `count` events encoded back to back in `bytes`, walked as received
    /// ones are (their structure and UTF-8; the limits are the publisher's
    /// to check) without copying them: for bytes this module cannot vouch
    /// for (the sender's retransmit ring holds bytes, not events).
    pub(crate) fn from_bytes(bytes: Bytes, count: u32) -> Result<Events, DecodeError> {
        let mut r = Reader(&bytes);
        let mut invalid = None;
        for _ in 0..count {
            walk_event(&mut r, &mut invalid)?;
        }
        if !r.0.is_empty() {
            return Err(DecodeError::TrailingBytes(r.0.len()));
        }
        Ok(Events {
            bytes,
            count,
            lens: None,
        })
    }

    /// The events, encoded back to back (as a `Data` body carries them).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.bytes
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
        // One whole event: the rest starts at the next one.
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
        // `taken` whole events, `used` bytes: the rest starts at the next one.
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

/// The events of an [`Events`], in order.
pub struct EventsIter<'a> {
    /// The run's checked bytes.
    bytes: &'a Bytes,
    /// Where the next event starts: the run's start, moved on only by whole
    /// events.
    at: usize,
    left: u32,
    lens: Option<&'a Lens>,
    /// Events returned so far.
    taken: u32,
}

impl EventsIter<'_> {
    /// Where the next event's bytes start and end. Nothing moves when it
    /// returns `None`.
    #[inline]
    fn next_span(&mut self) -> Option<(usize, usize)> {
        if self.left == 0 {
            return None;
        }
        let start = self.at;
        let end = match self.lens.and_then(|l| l.get(self.taken)) {
            Some(len) => start + len,
            None => {
                let rest = self.bytes.get(start..)?;
                // SAFETY: `start` is the first byte of an event of this
                // checked run (`at` moves only by whole events), and `rest`
                // is the run from there on.
                let (_, len) = unsafe { reread_event(rest) }?;
                start + len
            }
        };
        if end > self.bytes.len() {
            return None;
        }
        self.at = end;
        self.left -= 1;
        self.taken += 1;
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

/// The events of an [`Events`], read in place ([`Events::views`]).
pub struct EventViews<'a> {
    it: EventsIter<'a>,
}

impl<'a> Iterator for EventViews<'a> {
    type Item = EventRef<'a>;

    #[inline]
    fn next(&mut self) -> Option<EventRef<'a>> {
        let bytes: &'a [u8] = self.it.bytes;
        let (start, end) = self.it.next_span()?;
        // SAFETY: `start..end` is one whole event of this checked run (what
        // `next_span` returns).
        Some(unsafe { view_event(&bytes[start..end]) })
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.it.size_hint()
    }
}

impl ExactSizeIterator for EventViews<'_> {}

/// One event, encoded and checked against the limits: a received one
/// shares the bytes of the datagram it came in (cloning it copies nothing).
/// Read it in place with [`EncodedEvent::view`], or own it with
/// [`EncodedEvent::to_event`].
///
/// Holding a received one keeps its datagram's events (at most one
/// datagram) alive.
#[derive(Clone)]
pub struct EncodedEvent(
    /// Exactly one event of a checked run.
    Bytes,
);

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
    #[inline]
    pub fn view(&self) -> EventRef<'_> {
        // SAFETY: an `EncodedEvent` holds exactly one event of a checked
        // run (written by `new`, or cut from an `Events` by its iterator).
        unsafe { view_event(&self.0) }
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

/// The keys of an [`EventRef::Invalidate`], borrowed, in order.
#[derive(Clone)]
pub struct Keys<'a> {
    /// Starts at the first of `left` keys of an `Invalidate` of a checked
    /// run.
    rest: &'a [u8],
    left: u32,
}

impl<'a> Iterator for Keys<'a> {
    type Item = &'a str;

    #[inline]
    fn next(&mut self) -> Option<&'a str> {
        if self.left == 0 {
            return None;
        }
        let mut r = Reader(self.rest);
        let Ok(bytes) = r.field() else {
            self.left = 0;
            return None;
        };
        self.rest = r.0;
        self.left -= 1;
        // SAFETY: `rest` started at a key of a checked run (`Keys`'s
        // invariant, kept: it moved past exactly that key), so `bytes` is a
        // key that was checked or written from a `&str`.
        unsafe { Trusted::text(bytes) }.ok()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The repair path's check: a run of bytes is taken whole, with its
    /// exact count, and only if every string is UTF-8.
    #[test]
    fn from_bytes_takes_whole_checked_runs_only() {
        let events = vec![
            Event::Invalidate {
                keys: vec!["a".into(), "é".into()],
            },
            Event::ClearAll,
            Event::Custom {
                topic: "t".into(),
                payload: vec![0xff],
            },
        ];
        let mut run = RunBuf::default();
        for e in &events {
            run.push(e);
        }
        let bytes = Bytes::copy_from_slice(run.as_bytes());
        let got = Events::from_bytes(bytes.clone(), 3).unwrap();
        assert_eq!(got.to_vec(), events);
        assert_eq!(got, run.take());
        assert_eq!(
            Events::from_bytes(bytes.clone(), 2),
            Err(DecodeError::TrailingBytes(5)) // the Custom event: 03 01 74 01 ff
        );
        assert!(Events::from_bytes(bytes.clone(), 4).is_err());
        assert!(Events::from_bytes(bytes.slice(..bytes.len() - 1), 3).is_err());
        // Not UTF-8 where a string is: refused, never trusted.
        let mut bad = bytes.to_vec();
        let i = bad.iter().position(|&b| b == 0xc3).unwrap();
        bad[i] = 0xff;
        assert!(matches!(
            Events::from_bytes(Bytes::from(bad), 3),
            Err(DecodeError::Malformed(_))
        ));
    }
}
