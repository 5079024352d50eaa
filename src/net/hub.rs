//! Fan-out of deliveries from the driver to the node's subscriptions.
//!
//! The driver hands over everything one turn of its loop produced as one
//! batch: one lock and one wake-up per batch, not per event. Each batch is
//! counted by the subscribers that have yet to take it; the last one takes
//! it out of the queue, and when no other subscription still holds it, it
//! gets the deliveries themselves (moved, not cloned). With one subscriber,
//! the common case, nothing is ever cloned.
//!
//! A batch holds [`Output`]s: single deliveries, and runs of events (one per
//! datagram) that become deliveries only as a subscription reads them.
//! Positions and counts are in deliveries throughout.
//!
//! The queue holds at most `capacity` deliveries. Past it the oldest are
//! dropped, and a subscriber that had not taken them learns exactly how
//! many it missed (`Reset { Lagged }`), never a silent drop.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::proto::{Delivery, DeliveryRef, Output};

struct Slot {
    /// Index (since the node started) of the first delivery of `items`.
    first: u64,
    items: Arc<Vec<Output>>,
    /// Deliveries in `items`.
    len: usize,
    /// Leading deliveries dropped for capacity.
    skip: usize,
    /// Subscriptions that have yet to take this batch.
    rem: usize,
}

impl Slot {
    fn start(&self) -> u64 {
        self.first + self.skip as u64
    }
    fn end(&self) -> u64 {
        self.first + self.len as u64
    }
}

struct State {
    slots: VecDeque<Slot>,
    /// Index of the next delivery to be pushed.
    end: u64,
    /// Deliveries held (not skipped).
    queued: usize,
    capacity: usize,
    subscribers: usize,
    closed: bool,
    /// A subscription was handed to the application: from then on the
    /// driver holds back (reads no more) while the queue is half full.
    active: bool,
}

/// The queue between one driver and its node's subscriptions.
pub(crate) struct Hub {
    state: Mutex<State>,
    /// Wakes subscriptions: something was pushed, or the hub closed.
    notify: Notify,
    /// Wakes the driver: the queue fell below half its capacity.
    room: Notify,
    /// Events pushed inside runs (`Output::Run`), for the crate's tests of
    /// the path deliveries take.
    #[cfg(test)]
    pub run_events: std::sync::atomic::AtomicU64,
}

/// What [`Cursor::next_batch`] found.
pub(crate) enum Take {
    /// The cursor has a batch to read.
    Batch,
    /// This many deliveries were dropped before the cursor took them.
    Lagged(u64),
    /// Nothing yet.
    Empty,
    /// The driver has stopped and everything was read.
    Closed,
}

/// The batch a cursor is reading: the rest of its items, and the item in
/// hand (a run being read).
struct Current {
    items: Items,
    item: Option<Output>,
}

enum Items {
    /// Taken out of the queue: the items themselves.
    Owned(std::vec::IntoIter<Output>),
    /// Still shared with other subscriptions: the next index.
    Shared(Arc<Vec<Output>>, usize),
}

impl Current {
    /// Reading `items` from delivery `pos` on.
    fn new(mut items: Items, mut pos: usize) -> Current {
        let mut item = None;
        while let Some(mut o) = items.next() {
            let n = o.len();
            if pos < n {
                o.skip(pos);
                item = Some(o);
                break;
            }
            pos -= n;
        }
        Current { items, item }
    }

    fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(d) = self.item.as_mut().and_then(Output::pop) {
                return Some(d);
            }
            self.item = Some(self.items.next()?);
        }
    }
}

impl Items {
    fn next(&mut self) -> Option<Output> {
        match self {
            Items::Owned(it) => it.next(),
            Items::Shared(items, i) => {
                let o = items.get(*i).cloned();
                *i += 1;
                o
            }
        }
    }
}

/// One subscription's position in the hub.
pub(crate) struct Cursor {
    hub: Arc<Hub>,
    /// Index of the next delivery this cursor wants.
    next: u64,
    current: Option<Current>,
}

impl Hub {
    pub fn new(capacity: usize) -> Arc<Self> {
        Arc::new(Hub {
            state: Mutex::new(State {
                slots: VecDeque::new(),
                end: 0,
                queued: 0,
                capacity: capacity.max(1),
                subscribers: 0,
                closed: false,
                active: false,
            }),
            notify: Notify::new(),
            room: Notify::new(),
            #[cfg(test)]
            run_events: Default::default(),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new cursor that reads everything pushed from now on.
    pub fn subscribe(self: &Arc<Self>) -> Cursor {
        let mut st = self.lock();
        st.subscribers += 1;
        Cursor {
            hub: self.clone(),
            next: st.end,
            current: None,
        }
    }

    /// Hands a batch to every subscription (dropped if there is none).
    pub fn push(&self, items: Vec<Output>) {
        let n: usize = items.iter().map(Output::len).sum();
        #[cfg(test)]
        self.run_events.fetch_add(
            (items.iter())
                .filter(|o| matches!(o, Output::Run { .. }))
                .map(Output::len)
                .sum::<usize>() as u64,
            std::sync::atomic::Ordering::SeqCst,
        );
        if n == 0 {
            return;
        }
        {
            let mut st = self.lock();
            let first = st.end;
            st.end += n as u64;
            if st.subscribers == 0 {
                return;
            }
            let rem = st.subscribers;
            st.slots.push_back(Slot {
                first,
                items: Arc::new(items),
                len: n,
                skip: 0,
                rem,
            });
            st.queued += n;
            // Drop the oldest past capacity, partly from a batch if needed.
            while st.queued > st.capacity {
                let over = st.queued - st.capacity;
                let Some(front) = st.slots.front_mut() else {
                    break;
                };
                let held = (front.end() - front.start()) as usize;
                if held <= over {
                    st.slots.pop_front();
                    st.queued -= held;
                } else {
                    front.skip += over;
                    st.queued -= over;
                }
            }
        }
        self.notify.notify_waiters();
    }

    /// Marks that the application holds a subscription (see [`Hub::wants_pause`]).
    pub fn activate(&self) {
        self.lock().active = true;
    }

    /// True when the driver should stop reading for a while: a
    /// subscription is half its queue behind. Socket loss is repaired by
    /// the protocol; a `Reset { Lagged }` is not.
    pub fn wants_pause(&self) -> bool {
        let st = self.lock();
        st.active && st.queued * 2 >= st.capacity
    }

    /// Waits until the queue is below half its capacity.
    pub async fn room(&self) {
        let notified = self.room.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = self.lock();
            if st.queued * 2 < st.capacity || st.closed {
                return;
            }
        }
        notified.await;
    }

    /// No more batches: subscriptions end once they have read what is left.
    pub fn close(&self) {
        self.lock().closed = true;
        self.notify.notify_waiters();
    }
}

impl Cursor {
    /// The next delivery of the batch in hand, if any.
    pub fn next_in_batch(&mut self) -> Option<Delivery> {
        let d = self.current.as_mut()?.next();
        if d.is_none() {
            self.current = None;
        }
        d
    }

    /// Hands what is left of the batch in hand to `f`, borrowed, and lets
    /// go of it; returns how many deliveries that was.
    pub fn each_in_batch(&mut self, f: &mut impl FnMut(DeliveryRef<'_>)) -> usize {
        let Some(cur) = self.current.take() else {
            return 0;
        };
        let mut n = cur.item.as_ref().map_or(0, |o| o.each(f));
        let rest = match &cur.items {
            Items::Owned(it) => it.as_slice(),
            Items::Shared(items, i) => items.get(*i..).unwrap_or_default(),
        };
        for o in rest {
            n += o.each(f);
        }
        n
    }

    /// Takes the next batch into hand.
    pub fn next_batch(&mut self) -> Take {
        let mut st = self.hub.lock();
        // Lag first, even after close: what was dropped is never silent.
        let start = st.slots.front().map_or(st.end, Slot::start);
        if self.next < start {
            let missed = start - self.next;
            self.next = start;
            return Take::Lagged(missed);
        }
        let Some(i) = st
            .slots
            .iter()
            .position(|s| s.start() <= self.next && self.next < s.end())
        else {
            return if st.closed { Take::Closed } else { Take::Empty };
        };
        let slot = &mut st.slots[i];
        slot.rem = slot.rem.saturating_sub(1);
        let pos = (self.next - slot.first) as usize;
        self.next = slot.end();
        if slot.rem == 0 && i == 0 {
            let Some(slot) = st.slots.pop_front() else {
                unreachable!("slot 0 was just read");
            };
            st.queued -= (slot.end() - slot.start()) as usize;
            st.pop_taken();
            let room = st.queued * 2 < st.capacity;
            drop(st);
            if room {
                self.hub.room.notify_waiters();
            }
            let items = match Arc::try_unwrap(slot.items) {
                Ok(items) => Items::Owned(items.into_iter()),
                Err(shared) => Items::Shared(shared, 0),
            };
            self.current = Some(Current::new(items, pos));
        } else {
            self.current = Some(Current::new(Items::Shared(slot.items.clone(), 0), pos));
        }
        Take::Batch
    }

    /// Waits until [`Cursor::next_batch`] may find something new.
    pub async fn changed(&self) {
        let notified = self.hub.notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        {
            let st = self.hub.lock();
            if st.closed || st.end > self.next {
                return;
            }
        }
        notified.await;
    }
}

impl Drop for Cursor {
    fn drop(&mut self) {
        let mut st = self.hub.lock();
        st.subscribers = st.subscribers.saturating_sub(1);
        // Batches this cursor will never take no longer wait for it.
        let next = self.next;
        for s in st.slots.iter_mut().filter(|s| s.end() > next) {
            s.rem = s.rem.saturating_sub(1);
        }
        st.pop_taken();
        drop(st);
        self.hub.room.notify_waiters();
    }
}

impl State {
    /// Drops leading batches every subscription has taken.
    fn pop_taken(&mut self) {
        while self.slots.front().is_some_and(|s| s.rem == 0) {
            if let Some(s) = self.slots.pop_front() {
                self.queued -= (s.end() - s.start()) as usize;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EncodedEvent, Event, Events};

    fn ev(seq: u64) -> Output {
        Output::One(Delivery::Event {
            stream: 1,
            seq,
            node: None,
            event: EncodedEvent::new(&Event::ClearAll).unwrap(),
        })
    }

    /// Seqs `seqs` of stream 1: the first alone, the rest as one run.
    fn batch(seqs: std::ops::Range<u64>) -> Vec<Output> {
        let n = (seqs.end - seqs.start).saturating_sub(1) as usize;
        let mut items = vec![ev(seqs.start)];
        if n > 0 {
            items.push(Output::Run {
                stream: 1,
                first_seq: seqs.start + 1,
                node: None,
                events: Events::new(&vec![Event::ClearAll; n]).unwrap(),
            });
        }
        items
    }

    /// Everything the cursor can take now: seqs, and each lag's count.
    fn drain(c: &mut Cursor) -> (Vec<u64>, Vec<u64>) {
        let (mut got, mut lags) = (Vec::new(), Vec::new());
        loop {
            while let Some(d) = c.next_in_batch() {
                if let Delivery::Event { seq, .. } = d {
                    got.push(seq);
                }
            }
            match c.next_batch() {
                Take::Batch => {}
                Take::Lagged(n) => lags.push(n),
                Take::Empty | Take::Closed => return (got, lags),
            }
        }
    }

    #[test]
    fn every_subscription_gets_every_batch_in_order() {
        let hub = Hub::new(100);
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        hub.push(batch(1..4));
        hub.push(batch(4..6));
        assert_eq!(drain(&mut a), ((1..6).collect(), vec![]));
        // `a` took both first; `b` takes them last, and they leave the queue.
        assert_eq!(drain(&mut b), ((1..6).collect(), vec![]));
        assert_eq!(hub.lock().queued, 0);
        assert!(hub.lock().slots.is_empty());
    }

    #[test]
    fn a_sole_subscription_gets_the_deliveries_moved() {
        let hub = Hub::new(100);
        let mut a = hub.subscribe();
        hub.push(batch(1..3));
        assert!(matches!(a.next_batch(), Take::Batch));
        assert!(matches!(
            a.current,
            Some(Current {
                items: Items::Owned(_),
                ..
            })
        ));
        assert!(hub.lock().slots.is_empty(), "taken out of the queue");
    }

    #[test]
    fn past_capacity_the_oldest_go_and_the_count_is_exact() {
        let hub = Hub::new(8);
        let mut a = hub.subscribe();
        for i in 0..20 {
            // Batches of 5: capacity cuts through them.
            hub.push(batch(i * 5 + 1..i * 5 + 6));
        }
        assert_eq!(hub.lock().queued, 8);
        let (got, lags) = drain(&mut a);
        assert_eq!(lags, vec![92]);
        assert_eq!(got, (93..101).collect::<Vec<_>>());
        assert!(!hub.wants_pause(), "no subscription handed out yet");
        hub.activate();
        hub.push(batch(101..106));
        assert!(hub.wants_pause(), "5 of 8 queued");
    }

    #[test]
    fn a_lag_is_reported_even_after_the_end() {
        let hub = Hub::new(4);
        let mut a = hub.subscribe();
        hub.push(batch(1..11));
        hub.close();
        assert_eq!(drain(&mut a), ((7..11).collect(), vec![6]));
        assert!(matches!(a.next_batch(), Take::Closed));
    }

    /// The seqs `each_in_batch` hands out for the batch in hand.
    fn each_seqs(c: &mut Cursor) -> Vec<u64> {
        let mut got = Vec::new();
        let n = c.each_in_batch(&mut |d| {
            if let DeliveryRef::Event { seq, .. } = d {
                got.push(seq);
            }
        });
        assert_eq!(n, got.len());
        got
    }

    #[test]
    fn read_in_place_is_the_rest_of_the_batch_shared_or_moved() {
        let hub = Hub::new(100);
        let mut a = hub.subscribe();
        let mut b = hub.subscribe();
        hub.push(batch(1..6));
        hub.push(batch(6..9));
        // `a` takes the first batch while `b` still holds it (shared), reads
        // two one at a time, then the rest in place.
        assert!(matches!(a.next_batch(), Take::Batch));
        assert!(matches!(
            a.current,
            Some(Current {
                items: Items::Shared(..),
                ..
            })
        ));
        let one: Vec<_> = std::iter::from_fn(|| a.next_in_batch()).take(2).collect();
        assert!(matches!(
            one[..],
            [
                Delivery::Event { seq: 1, .. },
                Delivery::Event { seq: 2, .. }
            ]
        ));
        assert_eq!(each_seqs(&mut a), vec![3, 4, 5]);
        assert!(a.next_in_batch().is_none(), "the batch was let go");
        // `b` is the last to take it: moved, and read in place from inside
        // its run.
        assert!(matches!(b.next_batch(), Take::Batch));
        assert!(matches!(
            b.current,
            Some(Current {
                items: Items::Owned(_),
                ..
            })
        ));
        assert!(matches!(
            b.next_in_batch(),
            Some(Delivery::Event { seq: 1, .. })
        ));
        assert!(matches!(
            b.next_in_batch(),
            Some(Delivery::Event { seq: 2, .. })
        ));
        assert!(matches!(
            b.next_in_batch(),
            Some(Delivery::Event { seq: 3, .. })
        ));
        assert_eq!(each_seqs(&mut b), vec![4, 5]);
        // Nothing in hand: nothing handed out.
        assert_eq!(each_seqs(&mut b), Vec::<u64>::new());
        assert!(matches!(b.next_batch(), Take::Batch));
        assert_eq!(each_seqs(&mut b), vec![6, 7, 8]);
    }

    /// Runs of stream 1 as they come off the wire (their event boundaries
    /// kept), one per range.
    fn received(runs: &[std::ops::Range<u64>]) -> Vec<Output> {
        runs.iter()
            .map(|seqs| {
                let events = Events::new(&vec![Event::ClearAll; (seqs.end - seqs.start) as usize]);
                let body = crate::wire::Body::Data {
                    first_seq: seqs.start,
                    events: events.unwrap(),
                };
                let mut buf = Vec::new();
                crate::wire::encode(&crate::wire::Header::new(1, 1), &body, &mut buf);
                let Ok(crate::wire::Datagram {
                    body: crate::wire::Body::Data { events, .. },
                    ..
                }) = crate::wire::decode(&buf, 1)
                else {
                    panic!("a data datagram decodes");
                };
                Output::Run {
                    stream: 1,
                    first_seq: seqs.start,
                    node: None,
                    events,
                }
            })
            .collect()
    }

    #[test]
    fn read_in_place_from_inside_a_shared_batch_covers_the_items_after() {
        let hub = Hub::new(100);
        let mut a = hub.subscribe();
        let _b = hub.subscribe();
        hub.push(received(&[1..4, 4..6, 6..9]));
        assert!(matches!(a.next_batch(), Take::Batch));
        assert!(matches!(
            a.next_in_batch(),
            Some(Delivery::Event { seq: 1, .. })
        ));
        assert_eq!(each_seqs(&mut a), (2..9).collect::<Vec<_>>());
    }

    #[test]
    fn a_dropped_subscription_holds_nothing_and_the_end_is_seen() {
        let hub = Hub::new(100);
        let mut a = hub.subscribe();
        let b = hub.subscribe();
        hub.push(batch(1..4));
        drop(b);
        assert_eq!(drain(&mut a).0, vec![1, 2, 3]);
        assert!(hub.lock().slots.is_empty());
        hub.push(batch(4..5));
        hub.close();
        assert_eq!(drain(&mut a).0, vec![4]);
        assert!(matches!(a.next_batch(), Take::Closed));
        drop(a);
        hub.push(batch(5..6));
        assert_eq!(hub.lock().queued, 0, "no subscription: nothing kept");
    }
}
