//! Events, owned: what an application publishes. [`Event`]'s serde derive is
//! the definition of an event's bytes (the hand-written run in `run` writes
//! and reads exactly those); here too are the limits an event is checked
//! against before it is published.

use serde::{Deserialize, Serialize};

use super::run::encoded_event_len;
use super::{DATA_OVERHEAD, MAX_DATAGRAM, MAX_KEYS, MAX_KEY_LEN};

tagged! {
    /// One invalidation, owned: what an application publishes. A received
    /// event is an [`EncodedEvent`](super::EncodedEvent);
    /// [`EncodedEvent::to_event`](super::EncodedEvent::to_event) turns it
    /// into this.
    ///
    /// Its serde derive is the format's definition of an event (bincode 2,
    /// standard config); deserializing one bounds the keys and the payload
    /// it claims by [`MAX_KEYS`] and [`MAX_DATAGRAM`] before allocating.
    #[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
    pub enum Event, tags EventTag {
        /// Drop these keys.
        Invalidate {
            #[serde(deserialize_with = "crate::wire::bounded::keys")]
            keys: Vec<String>,
        },
        /// Drop every key starting with `prefix`.
        InvalidatePrefix { prefix: String },
        /// Drop everything.
        ClearAll,
        /// Application-defined message.
        Custom {
            topic: String,
            #[serde(deserialize_with = "crate::wire::bounded::payload")]
            payload: Vec<u8>,
        },
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
    /// An [`EventBatch`](super::EventBatch) already holds
    /// [`MAX_BATCH`](super::MAX_BATCH) events.
    #[error("a batch holds at most {0} events; publish it and start another")]
    BatchFull(usize),
}

/// Checks an event against the limits and `max_datagram`, before it is
/// published. Returns its encoded length.
pub fn check_event(event: &Event, max_datagram: usize) -> Result<usize, EventError> {
    validate_event(event)?;
    let size = encoded_event_len(event);
    check_size(size, max_datagram)?;
    Ok(size)
}

/// Packs `keys` into as few `Invalidate` events as fit in a datagram of
/// `max_datagram` each (and at most [`MAX_KEYS`] keys each), in order, by
/// the events' exact encoded sizes. Fails on a key over [`MAX_KEY_LEN`],
/// or one that does not fit in a datagram alone.
pub fn pack_keys(keys: Vec<String>, max_datagram: usize) -> Result<Vec<Event>, EventError> {
    use super::varint::varint_len;
    let budget = max_datagram.saturating_sub(DATA_OVERHEAD);
    // An event of `n` keys whose fields take `fields` bytes: its tag, the
    // key count's varint, the fields.
    let size = |n: usize, fields: usize| 1 + varint_len(n as u64) + fields;
    let mut events = Vec::new();
    let mut current: Vec<String> = Vec::new();
    let mut fields = 0;
    for key in keys {
        check_text(&key)?;
        let cost = varint_len(key.len() as u64) + key.len();
        if !current.is_empty()
            && (size(current.len() + 1, fields + cost) > budget || current.len() == MAX_KEYS)
        {
            events.push(Event::Invalidate {
                keys: std::mem::take(&mut current),
            });
            fields = 0;
        }
        if size(1, cost) > budget {
            return Err(EventError::TooLarge {
                size: size(1, cost),
                max_datagram,
            });
        }
        fields += cost;
        current.push(key);
    }
    if !current.is_empty() {
        events.push(Event::Invalidate { keys: current });
    }
    Ok(events)
}

/// An event of `size` encoded bytes fits in a datagram of `max_datagram`.
pub fn check_size(size: usize, max_datagram: usize) -> Result<(), EventError> {
    if size + DATA_OVERHEAD > max_datagram {
        return Err(EventError::TooLarge { size, max_datagram });
    }
    Ok(())
}

/// Checks `event` against the limits (not against a datagram size).
pub(super) fn validate_event(event: &Event) -> Result<(), EventError> {
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
pub(super) fn validate_keys<'a>(
    keys: impl ExactSizeIterator<Item = &'a str>,
) -> Result<(), EventError> {
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
