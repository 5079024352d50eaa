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
