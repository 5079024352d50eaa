//! The batch builder: events encoded as an application adds them, checked
//! against the limits on the way in, handed to the node as one [`Events`].

use super::event::{validate_event, validate_keys};
use super::run::RunBuf;
use super::{Event, EventError, Events};

/// Events in one [`EventBatch`]: what a node takes in one turn while it
/// still takes publishes (65,536 unsent events).
pub const MAX_BATCH: usize = 65_536;

/// Events encoded as they are added, ready to publish together
/// (`Node::publish_batch`): one buffer for all of them, no allocation per
/// event, and nothing left to encode on the node's side.
#[derive(Debug, Clone, Default)]
pub struct EventBatch {
    run: RunBuf,
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
            run: RunBuf::with_capacity(bytes),
            largest: 0,
        }
    }

    /// Adds `event`, checked against the limits (the datagram size is
    /// checked when the batch is published). At most [`MAX_BATCH`] events.
    pub fn push(&mut self, event: &Event) -> Result<(), EventError> {
        validate_event(event)?;
        self.room()?;
        let size = self.run.push(event);
        self.added(size);
        Ok(())
    }

    /// Adds `Invalidate { keys }` from borrowed keys (no allocation once
    /// the batch has room).
    pub fn invalidate(&mut self, keys: &[&str]) -> Result<(), EventError> {
        validate_keys(keys.iter().copied())?;
        self.room()?;
        let size = self.run.push_keys(keys.iter().copied());
        self.added(size);
        Ok(())
    }

    fn room(&self) -> Result<(), EventError> {
        if self.run.len() >= MAX_BATCH {
            return Err(EventError::BatchFull(MAX_BATCH));
        }
        Ok(())
    }

    fn added(&mut self, size: usize) {
        self.largest = self.largest.max(size);
    }

    /// The number of events.
    pub fn len(&self) -> usize {
        self.run.len()
    }

    /// True when there are none.
    pub fn is_empty(&self) -> bool {
        self.run.is_empty()
    }

    /// The encoded size of the largest event (what must fit in a datagram).
    pub fn largest(&self) -> usize {
        self.largest
    }

    /// Empties the batch, keeping its buffer when nothing else shares it.
    pub fn clear(&mut self) {
        self.run.clear();
        self.largest = 0;
    }

    /// The events, shared; the batch is left empty (its remaining room is
    /// kept for the next events).
    pub fn take(&mut self) -> Events {
        self.largest = 0;
        self.run.take()
    }
}
