//! The one no-silent-loss checker, over a [`Record`]: the simulator's and
//! the loopback cluster's runs are judged by the same rules.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use super::record::{Life, NodeId, Published, Record};
use crate::proto::{ConfirmReport, Delivery, MemberRef, ResetReason};
use crate::wire::{EncodedEvent, Event};

/// What the checker counted when the promise held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckReport {
    /// Lives checked (those still running).
    pub lives: u64,
    /// (life, event) pairs the life should have seen and kept the promise
    /// for: each was delivered, or covered by a `Reset` after it.
    pub expected: u64,
    /// Of those, delivered as events.
    pub delivered: u64,
    /// Of those, covered by a `Reset` produced at or after the publish
    /// instead.
    pub covered_by_reset: u64,
    /// (life, event) pairs neither delivered nor covered, and not expected
    /// because no protocol could know of the event (exception 3 of
    /// [`Record::check`]).
    pub excused: u64,
    /// (life, event) pairs neither delivered nor covered because the
    /// forger stood in for the real stream where no protocol without keys
    /// can tell them apart: a forged event took the event's seq at a life
    /// that never received the real one, or a forged `Goodbye` ended a
    /// crashed publisher for a life that heard nothing real of it after the
    /// event (exceptions 4 and 5 of [`Record::check`]).
    pub forged_in_place: u64,
    /// Confirmation reports checked (every life's, ended lives' included).
    pub confirmations: u64,
    /// (member, event) pairs those reports claimed (confirmed or covered
    /// by a `Reset`) and the member's life bears out.
    pub confirmed_claims: u64,
}

/// The first broken promise found: an event a node lost silently (it
/// neither delivered it nor a `Reset` after it), or, when
/// [`SilentLoss::confirmation`] is set, a false confirmation (a report
/// claimed that the node had an event it had not delivered, nor a `Reset`
/// after it, by the report's time).
#[derive(Debug, Clone)]
pub struct SilentLoss {
    /// The receiving node (for a false confirmation, the member claimed;
    /// `NodeId::MAX` if that member was no life of the run at all).
    pub node: NodeId,
    /// Its name.
    pub name: String,
    /// Its stream in the life that lost the event.
    pub node_stream: u64,
    /// That life's join and sync, since the start of the run.
    pub life: (Duration, Duration),
    /// The publishing node.
    pub publisher: NodeId,
    /// The publishing stream.
    pub stream: u64,
    /// The seq lost.
    pub seq: u64,
    /// The event lost.
    pub event: Event,
    /// When it was published, since the start of the run.
    pub published_at: Duration,
    /// The life's last deliveries of that stream, and its `Reset`s, newest
    /// first (at most 20).
    pub log: Vec<String>,
    /// Set when the promise broken is a confirmation's: which report
    /// claimed the member.
    pub confirmation: Option<FalseConfirmation>,
}

/// A confirmation report that claimed a member falsely (see
/// [`SilentLoss::confirmation`]).
#[derive(Debug, Clone)]
pub struct FalseConfirmation {
    /// The node whose confirmation it was (the publisher).
    pub by: NodeId,
    /// Its name.
    pub by_name: String,
    /// When the outcome came, since the start of the run.
    pub at: Duration,
    /// The member as the report named it.
    pub member: MemberRef,
    /// The report.
    pub report: ConfirmReport,
}

impl fmt::Display for SilentLoss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(c) = &self.confirmation {
            writeln!(
                f,
                "false confirmation: node {} (#{}) reported at {:?} that member {} (#{}, stream \
                 {:#018x}, joined at {:?}, in sync at {:?}) had seq {} of stream {:#018x} ({:?}) \
                 published at {:?}, but it delivered neither that event nor a Reset between the \
                 publish and the report; the report: {:?}; the member's last deliveries of that \
                 stream, and its Resets, newest first:",
                c.by_name,
                c.by,
                c.at,
                c.member,
                self.node,
                self.node_stream,
                self.life.0,
                self.life.1,
                self.seq,
                self.stream,
                self.event,
                self.published_at,
                c.report,
            )?;
            for line in &self.log {
                writeln!(f, "  {line}")?;
            }
            return Ok(());
        }
        writeln!(
            f,
            "silent loss: node {} (#{}, stream {:#018x}, joined at {:?}, in sync at {:?}) never \
             delivered seq {} of stream {:#018x} (node #{}: {:?}) published at {:?}, nor a Reset \
             after it; its last deliveries of that stream, and its Resets, newest first:",
            self.name,
            self.node,
            self.node_stream,
            self.life.0,
            self.life.1,
            self.seq,
            self.stream,
            self.publisher,
            self.event,
            self.published_at
        )?;
        for line in &self.log {
            writeln!(f, "  {line}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SilentLoss {}

/// What a member's life can bear out: the (stream, seq) of every event it
/// delivered, and when each of its Resets was produced, in order.
type Borne = (HashSet<(u64, u64)>, Vec<Instant>);

impl Record {
    /// Checks the promise — for every event a receiver should have seen,
    /// it delivers that event or a `Reset` after it — on this record.
    ///
    /// The rules:
    ///
    /// - **Lives checked.** Every life still running. A life that crashed
    ///   or said `Goodbye` took its cache with it: what it did not deliver
    ///   before its end is not judged (it may have been cut off from an
    ///   event with no way yet to know). A restart ends one life and
    ///   begins another, with a new stream.
    /// - **Kept.** A life L kept the promise for an event E published by
    ///   stream S at instant t if it delivered E (matched by stream and
    ///   seq, so a lost repeat of the same key is caught), or delivered a
    ///   `Reset` — of any reason, `Lagged` included, since any `Reset`
    ///   clears the whole cache — produced at or after t.
    /// - **When a `Reset` happened.** Its production time, not when a
    ///   reader got to it ([`Life::resets`]): a late reader must not make a
    ///   `Reset` the protocol produced before E look like one after E. A
    ///   protocol `Reset` is timed by the driver (the first clock reading
    ///   it gave the protocol in the loop turn that produced it: never
    ///   later than the truth). A `Reset { Lagged }` stands for deliveries
    ///   the node's queue dropped before the subscriber took them; it is
    ///   timed as the newest of those was produced. So it covers every
    ///   event that can have been among them (an event's delivery is
    ///   produced after its publish), and no event published after them:
    ///   such an event's delivery, had the node produced it, would have come
    ///   after the lag and been read. When the subscriber is told (later)
    ///   is when the application clears, but it does not excuse an event
    ///   the node never produced.
    /// - **Should have seen.** L must keep it for every event, except when:
    ///   1. S is L's own stream and L does not deliver its own events
    ///      ([`Life::deliver_own`] false); when it does, its own events
    ///      are owed exactly like others';
    ///   2. E was published before L's join returned (`Life::synced`):
    ///      nothing before the join matters, the application caches only
    ///      after it;
    ///   3. no protocol could know of E: S's life has ended (crash or
    ///      `Goodbye`), and L received no datagram of S after the last
    ///      `Reset` in which L gave S up (`StreamTimedOut` or
    ///      `StreamEvicted` naming S: it no longer follows S; compared by
    ///      the `Reset`'s production time), or none at all. A publisher
    ///      that is still running is never excused: its heartbeats reach L
    ///      once faults heal. Pairs excused so, neither delivered nor
    ///      covered, are counted in [`CheckReport::excused`].
    ///   4. with forgery ([`Record::forgery`]: datagrams were forged, with
    ///      no keys to tell them apart): L delivered an event at E's stream
    ///      and seq whose content is not E's (a forged one took E's seq),
    ///      and no datagram carrying E itself ever reached L
    ///      ([`Life::received`]: it was lost on the way, or not sent yet and
    ///      then lost). A receiver that gets one event for a seq cannot tell
    ///      who sent it, so nothing tells it that the real one is missing;
    ///      with keys the forged one is never accepted. Counted in
    ///      [`CheckReport::forged_in_place`];
    ///   5. with forgery: S's life crashed, a forged `Goodbye` in S's name
    ///      reached L, and no real datagram of S reached L from E's publish
    ///      on ([`Life::heard_real`], [`Life::forged_goodbyes`]). Then all L
    ///      could know of S after E came from the forger, and a real stream
    ///      that said `Goodbye` and ended looks the same: L retires S
    ///      instead of timing it out with a `Reset` (a live publisher's
    ///      heartbeat or events show a forged `Goodbye` false, a crashed
    ///      one's cannot). Counted in [`CheckReport::forged_in_place`] too.
    ///
    /// - **Forgery.** With [`Record::forgery`], an event counts as
    ///   delivered only if its content is E's; events nobody published
    ///   (forged) may be delivered, and are not errors.
    ///
    /// - **No false confirmation.** For every confirmation report of every
    ///   life (ended lives' too: a report is a claim made when it came),
    ///   every member it names confirmed or covered by a `Reset` must be a
    ///   life of the run (by stream id) that, for each event of the
    ///   report's seqs, delivered it (at any time: a loopback reader may
    ///   read it after the report came), or delivered a `Reset` produced at
    ///   or after its publish and no later than the report came. Events
    ///   published before the member's join returned are not owed (rule 2
    ///   below: it caches only after its join).
    ///
    /// Run it once the run has settled: faults healed, repairs done, and
    /// past the stream timeout if a publisher crashed.
    pub fn check(&self) -> Result<CheckReport, Box<SilentLoss>> {
        let mut report = CheckReport::default();
        self.check_confirmations(&mut report)?;
        let ended: HashMap<u64, bool> = self
            .lives
            .iter()
            .map(|l| (l.stream, l.ended().is_some()))
            .collect();
        let crashed: HashSet<u64> = (self.lives.iter())
            .filter(|l| l.crashed.is_some() && l.closed.is_none())
            .map(|l| l.stream)
            .collect();
        for life in self.lives.iter().filter(|l| l.ended().is_none()) {
            report.lives += 1;
            let got: HashSet<(u64, u64)> = life.events().collect();
            // With forgery: what was delivered at each (stream, seq).
            let mut contents: HashMap<(u64, u64), Vec<&EncodedEvent>> = HashMap::new();
            if self.forgery {
                for (k, e) in life.delivered_events() {
                    contents.entry(k).or_default().push(e);
                }
            }
            let last_reset = life.resets().map(|(t, _)| t).max();
            let gave_up: HashMap<u64, Instant> = life
                .resets()
                .filter_map(|(t, r)| match r {
                    ResetReason::StreamTimedOut { stream, .. }
                    | ResetReason::StreamEvicted { stream, .. } => Some((*stream, t)),
                    _ => None,
                })
                .fold(HashMap::new(), |mut m, (s, t)| {
                    let e = m.entry(s).or_insert(t);
                    *e = (*e).max(t);
                    m
                });
            for p in &self.published {
                let own = p.stream == life.stream;
                if (own && !life.deliver_own) || p.at < life.synced {
                    continue;
                }
                let key = (p.stream, p.seq);
                let delivered = if self.forgery {
                    contents
                        .get(&key)
                        .is_some_and(|v| v.iter().any(|e| **e == p.event))
                } else {
                    got.contains(&key)
                };
                if delivered {
                    report.expected += 1;
                    report.delivered += 1;
                    continue;
                }
                if last_reset.is_some_and(|r| r >= p.at) {
                    report.expected += 1;
                    report.covered_by_reset += 1;
                    continue;
                }
                if self.forgery && contents.contains_key(&key) && !life.received.contains(&key) {
                    report.forged_in_place += 1;
                    continue;
                }
                if self.forgery
                    && crashed.contains(&p.stream)
                    && life.forged_goodbyes.contains(&p.stream)
                    && life.heard_real.get(&p.stream).is_none_or(|t| *t < p.at)
                {
                    report.forged_in_place += 1;
                    continue;
                }
                let unknowable = ended.get(&p.stream).copied().unwrap_or(false)
                    && match life.heard.get(&p.stream) {
                        None => true,
                        Some(heard) => gave_up.get(&p.stream).is_some_and(|g| heard <= g),
                    };
                if !unknowable {
                    return Err(Box::new(self.silent_loss(life, p)));
                }
                report.excused += 1;
            }
        }
        Ok(report)
    }

    /// The rule of false confirmations (see [`Record::check`]). A member's
    /// life is read once: what it delivered, and when its Resets were
    /// produced (sorted).
    fn check_confirmations(&self, report: &mut CheckReport) -> Result<(), Box<SilentLoss>> {
        let published: HashMap<(u64, u64), &Published> = self
            .published
            .iter()
            .map(|p| ((p.stream, p.seq), p))
            .collect();
        let mut seen: HashMap<u64, Borne> = HashMap::new();
        for by in &self.lives {
            for (t, rep) in &by.confirmations {
                report.confirmations += 1;
                let publisher = self.life_of_stream(rep.stream);
                for m in rep.confirmed.iter().chain(&rep.covered_by_reset) {
                    let Some(life) = self.life_of_stream(m.stream) else {
                        let seq = rep.seqs.start;
                        let p = published.get(&(rep.stream, seq)).copied();
                        return Err(Box::new(
                            self.false_confirmation(by, *t, rep, m, None, seq, p),
                        ));
                    };
                    let (got, resets) = seen.entry(m.stream).or_insert_with(|| {
                        let mut r: Vec<Instant> = life.resets().map(|(t, _)| t).collect();
                        r.sort();
                        (life.events().collect(), r)
                    });
                    for seq in rep.seqs.clone() {
                        let p = published.get(&(rep.stream, seq)).copied();
                        // Unknown publish (a seq never published): any time
                        // in the publisher's life.
                        let at = p
                            .map(|p| p.at)
                            .or(publisher.map(|l| l.joined))
                            .unwrap_or(self.start);
                        if at < life.synced || got.contains(&(rep.stream, seq)) {
                            report.confirmed_claims += 1;
                            continue;
                        }
                        let first = resets.partition_point(|r| *r < at);
                        if resets.get(first).is_some_and(|r| r <= t) {
                            report.confirmed_claims += 1;
                            continue;
                        }
                        return Err(Box::new(self.false_confirmation(
                            by,
                            *t,
                            rep,
                            m,
                            Some(life),
                            seq,
                            p,
                        )));
                    }
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn false_confirmation(
        &self,
        by: &Life,
        at: Instant,
        report: &ConfirmReport,
        member: &MemberRef,
        life: Option<&Life>,
        seq: u64,
        p: Option<&Published>,
    ) -> SilentLoss {
        let rel = |t: Instant| t.saturating_duration_since(self.start);
        let p = p.cloned().unwrap_or(Published {
            node: by.node,
            stream: report.stream,
            seq,
            at: by.joined,
            event: Event::ClearAll,
        });
        let mut v = match life {
            Some(l) => self.silent_loss(l, &p),
            None => SilentLoss {
                node: NodeId::MAX,
                name: member.to_string(),
                node_stream: member.stream,
                life: (Duration::ZERO, Duration::ZERO),
                publisher: p.node,
                stream: p.stream,
                seq,
                event: p.event.clone(),
                published_at: rel(p.at),
                log: vec!["(no life of the run has this stream)".to_string()],
                confirmation: None,
            },
        };
        v.confirmation = Some(FalseConfirmation {
            by: by.node,
            by_name: by.name.clone(),
            at: rel(at),
            member: member.clone(),
            report: report.clone(),
        });
        v
    }

    fn silent_loss(&self, life: &Life, p: &Published) -> SilentLoss {
        let rel = |t: Instant| t.saturating_duration_since(self.start);
        let log = (life.deliveries.iter().enumerate())
            .filter(|(_, (_, d))| match d {
                Delivery::Event { stream, .. } => *stream == p.stream,
                Delivery::Reset { .. } => true,
            })
            .rev()
            .take(20)
            .map(|(i, (t, d))| match life.produced.get(&i) {
                Some(at) => format!("{:?}: {d:?} (produced at {:?})", rel(*t), rel(*at)),
                None => format!("{:?}: {d:?}", rel(*t)),
            })
            .collect();
        SilentLoss {
            node: life.node,
            name: life.name.clone(),
            node_stream: life.stream,
            life: (rel(life.joined), rel(life.synced)),
            publisher: p.node,
            stream: p.stream,
            seq: p.seq,
            event: p.event.clone(),
            published_at: rel(p.at),
            log,
            confirmation: None,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The rules on hand-made records: each excuse applies only where it
    //! says, and a loss outside them is caught.

    use super::*;
    use crate::wire::EncodedEvent;

    const S: u64 = 0xa; // the publisher's stream
    const R: u64 = 0xb; // the receiver's stream

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// A publisher (node 0) and a receiver (node 1) in sync at 100 ms;
    /// seq 1 published at 200 ms.
    fn record() -> Record {
        let t0 = Instant::now();
        let mut r = Record::new(t0);
        r.begin_life(0, "tx", S, t0, t0 + ms(100));
        r.begin_life(1, "rx", R, t0, t0 + ms(100));
        r.published.push(Published {
            node: 0,
            stream: S,
            seq: 1,
            at: t0 + ms(200),
            event: Event::ClearAll,
        });
        r
    }

    fn at(r: &Record, n: u64) -> Instant {
        r.start + ms(n)
    }

    fn deliver(r: &mut Record, life: usize, t: u64, d: Delivery) {
        let t = at(r, t);
        r.lives[life].deliveries.push((t, d));
    }

    fn event(seq: u64) -> Delivery {
        Delivery::Event {
            stream: S,
            seq,
            node: None,
            event: EncodedEvent::new(&Event::ClearAll).unwrap(),
        }
    }

    fn reset(reason: ResetReason) -> Delivery {
        Delivery::Reset { reason }
    }

    fn timed_out() -> Delivery {
        reset(ResetReason::StreamTimedOut {
            stream: S,
            next_expected: 1,
        })
    }

    #[test]
    fn a_delivered_event_keeps_the_promise() {
        let mut r = record();
        deliver(&mut r, 1, 201, event(1));
        let rep = r.check().unwrap();
        assert_eq!((rep.lives, rep.expected, rep.delivered), (2, 1, 1));
    }

    #[test]
    fn an_event_neither_delivered_nor_reset_is_a_silent_loss() {
        let mut r = record();
        let t = at(&r, 150);
        r.lives[1].heard.insert(S, t);
        let v = r.check().unwrap_err();
        assert_eq!((v.node, v.stream, v.seq), (1, S, 1));
        assert!(v.to_string().contains("silent loss: node rx"), "{v}");
    }

    #[test]
    fn a_reset_covers_only_what_was_published_before_it() {
        let mut r = record();
        deliver(&mut r, 1, 199, reset(ResetReason::Lagged { missed: 1 }));
        assert!(
            r.check().is_err(),
            "a Reset before the publish covers nothing"
        );
        deliver(&mut r, 1, 200, reset(ResetReason::Lagged { missed: 1 }));
        assert_eq!(r.check().unwrap().covered_by_reset, 1);
    }

    #[test]
    fn the_event_is_matched_by_seq() {
        let mut r = record();
        deliver(&mut r, 1, 201, event(2));
        assert!(r.check().is_err());
    }

    #[test]
    fn events_before_the_join_returned_and_own_events_are_not_expected() {
        let mut r = record();
        let t = at(&r, 201);
        r.lives[1].synced = t;
        r.published.push(Published {
            node: 1,
            stream: R,
            seq: 1,
            at: at(&r, 300),
            event: Event::ClearAll,
        });
        // The receiver owes nothing; the publisher owes the receiver's event.
        assert!(r.check().is_err());
        let own = Delivery::Event {
            stream: R,
            seq: 1,
            node: None,
            event: EncodedEvent::new(&Event::ClearAll).unwrap(),
        };
        deliver(&mut r, 0, 301, own);
        let rep = r.check().unwrap();
        assert_eq!((rep.expected, rep.delivered), (1, 1), "{rep:?}");
    }

    #[test]
    fn an_ended_life_is_not_checked() {
        for end in [
            |l: &mut Life, t| l.crashed = Some(t),
            |l: &mut Life, t| l.closed = Some(t),
        ] {
            let mut r = record();
            let t = at(&r, 300);
            end(&mut r.lives[1], t);
            assert_eq!(r.check().unwrap().lives, 1, "only the publisher");
        }
    }

    #[test]
    fn a_dead_publisher_never_heard_is_excused_a_live_one_is_not() {
        let mut r = record();
        assert!(r.check().is_err(), "alive: its heartbeats will come");
        let t = at(&r, 250);
        r.lives[0].crashed = Some(t);
        assert_eq!(r.check().unwrap().excused, 1);
        // Heard once: the receiver follows the stream, so it must learn.
        let t = at(&r, 150);
        r.lives[1].heard.insert(S, t);
        assert!(r.check().is_err());
    }

    #[test]
    fn a_dead_publisher_is_excused_only_if_unheard_since_it_was_given_up() {
        for give_up in [
            timed_out(),
            reset(ResetReason::StreamEvicted {
                stream: S,
                missing: (1, 1),
            }),
        ] {
            let mut r = record();
            let t = at(&r, 400);
            r.lives[0].crashed = Some(t);
            let t = at(&r, 50);
            r.lives[1].heard.insert(S, t);
            // Given up (before the publish, so it covers nothing).
            deliver(&mut r, 1, 150, give_up.clone());
            assert_eq!(r.check().unwrap().excused, 1, "{give_up:?}");
            // Heard again after giving it up: it follows the stream again.
            let t = at(&r, 160);
            r.lives[1].heard.insert(S, t);
            assert!(r.check().is_err(), "{give_up:?}");
        }
        // Another stream's timeout is no excuse.
        let mut r = record();
        let t = at(&r, 400);
        r.lives[0].crashed = Some(t);
        let t = at(&r, 50);
        r.lives[1].heard.insert(S, t);
        deliver(
            &mut r,
            1,
            150,
            reset(ResetReason::StreamTimedOut {
                stream: 0xc,
                next_expected: 1,
            }),
        );
        assert!(r.check().is_err());
    }

    /// Delivers `d` as read at `read` ms, produced at `produced` ms.
    fn deliver_late(r: &mut Record, life: usize, read: u64, produced: u64, d: Delivery) {
        let at = at(r, produced);
        let l = &mut r.lives[life];
        l.produced.insert(l.deliveries.len(), at);
        deliver(r, life, read, d);
    }

    #[test]
    fn a_reset_is_timed_by_its_production_not_its_reading() {
        // Produced at 190 (before the publish at 200), read at 250 by a late
        // reader: it covers nothing, and the lost event is reported.
        let give_up = reset(ResetReason::RetriesExhausted {
            stream: S,
            missing: (0, 1),
            tries: 10,
        });
        let mut r = record();
        deliver_late(&mut r, 1, 250, 190, give_up.clone());
        let v = r.check().unwrap_err();
        assert_eq!((v.node, v.seq), (1, 1));
        assert!(v.to_string().contains("(produced at 190ms)"), "{v}");
        // Produced at the publish: it covers it.
        let mut r = record();
        deliver_late(&mut r, 1, 250, 200, give_up);
        assert_eq!(r.check().unwrap().covered_by_reset, 1);
    }

    #[test]
    fn a_lag_covers_only_what_was_produced_before_the_deliveries_it_replaced() {
        // The queue dropped deliveries produced up to 150; the subscriber
        // is told at 300. The event published at 200 cannot have been
        // among them: it is not covered.
        let mut r = record();
        deliver_late(
            &mut r,
            1,
            300,
            150,
            reset(ResetReason::Lagged { missed: 7 }),
        );
        assert!(r.check().is_err());
        let mut r = record();
        deliver_late(
            &mut r,
            1,
            300,
            200,
            reset(ResetReason::Lagged { missed: 7 }),
        );
        assert_eq!(r.check().unwrap().covered_by_reset, 1);
    }

    #[test]
    fn a_give_up_is_timed_by_its_production_too() {
        // A dead publisher, heard at 160; its timeout was produced at 150
        // (read at 170): the receiver heard it after giving it up, so it
        // follows it and should know of the event.
        let mut r = record();
        let t = at(&r, 400);
        r.lives[0].crashed = Some(t);
        let t = at(&r, 160);
        r.lives[1].heard.insert(S, t);
        deliver_late(&mut r, 1, 170, 150, timed_out());
        assert!(r.check().is_err());
        // Produced after it was last heard: given up, excused.
        let t = at(&r, 165);
        r.lives[1].produced.insert(0, t);
        assert_eq!(r.check().unwrap().excused, 1);
    }

    #[test]
    fn own_events_are_owed_when_the_life_delivers_them() {
        let mut r = record();
        deliver(&mut r, 1, 201, event(1));
        r.lives[0].deliver_own = true;
        // The publisher owes its own event to its own subscribers.
        let v = r.check().unwrap_err();
        assert_eq!((v.node, v.publisher, v.seq), (0, 0, 1));
        // A Reset after it keeps the promise, as for anyone's event.
        let mut covered = r.clone();
        deliver(&mut covered, 0, 200, timed_out());
        assert_eq!(covered.check().unwrap().covered_by_reset, 1);
        deliver(&mut r, 0, 200, event(1));
        let rep = r.check().unwrap();
        assert_eq!((rep.expected, rep.delivered), (2, 2), "{rep:?}");
    }

    /// A confirmation by the publisher (node 0), its outcome at `t` ms,
    /// claiming `confirmed` and `covered` for seq 1.
    fn confirmation(r: &mut Record, t: u64, confirmed: &[u64], covered: &[u64]) {
        let refs = |v: &[u64]| {
            v.iter()
                .map(|s| MemberRef {
                    name: Some(format!("{s:x}")),
                    stream: *s,
                })
                .collect()
        };
        let report = ConfirmReport {
            stream: S,
            seqs: 1..2,
            confirmed: refs(confirmed),
            covered_by_reset: refs(covered),
            departed: Vec::new(),
            pending: Vec::new(),
            elapsed: ms(t - 200),
        };
        let t = at(r, t);
        r.lives[0].confirmations.push((t, report));
    }

    #[test]
    fn a_confirmation_the_member_bears_out_passes() {
        let mut r = record();
        deliver(&mut r, 1, 201, event(1));
        confirmation(&mut r, 202, &[R], &[]);
        let rep = r.check().unwrap();
        assert_eq!((rep.confirmations, rep.confirmed_claims), (1, 1));
    }

    #[test]
    fn a_forged_false_confirmation_is_caught() {
        // The member never delivered seq 1; a Reset much later keeps the
        // no-silent-loss promise, but not the report's claim at 202 ms.
        let mut r = record();
        deliver(&mut r, 1, 500, timed_out());
        assert!(r.clone().check().is_ok(), "the promise itself is kept");
        confirmation(&mut r, 202, &[R], &[]);
        let v = r.check().unwrap_err();
        let c = v.confirmation.as_ref().expect("a false confirmation");
        assert_eq!((v.node, v.stream, v.seq, c.by), (1, S, 1, 0));
        assert_eq!(c.member.stream, R);
        assert_eq!(c.at, ms(202));
        let text = v.to_string();
        assert!(
            text.starts_with("false confirmation: node tx (#0)"),
            "{text}"
        );
        assert!(text.contains("member b (#1"), "{text}");
        // Claimed covered by a Reset instead: the same lie.
        let mut r = record();
        confirmation(&mut r, 202, &[], &[R]);
        assert!(r.check().unwrap_err().confirmation.is_some());
    }

    #[test]
    fn a_reset_backs_a_claim_only_between_the_publish_and_the_report() {
        for (reset_at, ok) in [(199, false), (200, true), (202, true), (203, false)] {
            let mut r = record();
            deliver(
                &mut r,
                1,
                reset_at,
                reset(ResetReason::Lagged { missed: 1 }),
            );
            // A later Reset keeps the promise either way.
            deliver(&mut r, 1, 600, timed_out());
            confirmation(&mut r, 202, &[], &[R]);
            let got = r.check();
            assert_eq!(got.is_ok(), ok, "Reset at {reset_at}: {got:?}");
        }
    }

    #[test]
    fn a_member_that_is_no_life_of_the_run_is_a_false_confirmation() {
        let mut r = record();
        deliver(&mut r, 1, 201, event(1));
        confirmation(&mut r, 202, &[R, 0xdead], &[]);
        let v = r.check().unwrap_err();
        assert_eq!((v.node, v.node_stream), (NodeId::MAX, 0xdead));
        assert!(v.to_string().contains("no life of the run"), "{v}");
    }

    #[test]
    fn a_member_owes_no_event_published_before_its_join_returned() {
        let mut r = record();
        let t = at(&r, 250);
        r.lives[1].synced = t;
        confirmation(&mut r, 300, &[R], &[]);
        let rep = r.check().unwrap();
        assert_eq!((rep.confirmations, rep.confirmed_claims), (1, 1));
    }
}
