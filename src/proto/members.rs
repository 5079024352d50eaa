//! Membership and confirmation, sans-IO.
//!
//! Every node hears every other node's datagrams, so every node keeps a
//! view of the members of its cluster (each node by its stream id): name,
//! address, when last heard, whether it is live (heard within the lease),
//! and, from the members' `Report`s, how far each has delivered each
//! stream.
//!
//! A publisher that awaits a confirmation ([`Members::confirm`]) takes a
//! snapshot of the members live at that moment, and asks them to
//! acknowledge (`AckRequest`, a heartbeat with a request). Each member
//! answers, once it has delivered everything asked for (or a `Reset`
//! covered it), with a `Report` after a short random delay, coalesced with
//! its other answers. The confirmation resolves member by member:
//! confirmed (the member's report says it delivered every event), covered
//! (a `Reset` covered one of them), departed (the member said `Goodbye`, or
//! its lease expired), or, at the deadline, pending. The publisher asks
//! again, every retry interval, only the members that have not answered.
//!
//! Acknowledgements are multicast to the group, like every other datagram:
//! they reach the node that asked however many nodes share its host and
//! port (each takes only the positions of its own stream), and every
//! other node learns the same positions for its membership view.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use crate::wire::Position;

/// A duration as milliseconds (a float), for JSON.
pub(crate) fn ms<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1e6).round() / 1e3)
}

fn ms_opt<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => ms(d, s),
        None => s.serialize_none(),
    }
}

/// Whether a member is still part of the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Liveness {
    /// Heard within the lease.
    Live,
    /// Said `Goodbye`.
    Left,
    /// Not heard for longer than the lease, without `Goodbye`: crashed, or
    /// cut off.
    Dead,
}

/// One member of the cluster as a node sees it ([`crate::Node::members`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Member {
    /// Its stream id (new at every start of the node).
    pub stream: u64,
    /// Its name, once heard.
    pub name: Option<String>,
    /// The address its datagrams come from, once heard (`None` in the
    /// simulator, and for this node itself).
    pub addr: Option<SocketAddr>,
    /// True for the node that made this view.
    pub this_node: bool,
    /// It never publishes.
    pub receive_only: bool,
    /// Live, left or dead.
    pub state: Liveness,
    /// How long ago it was last heard (zero for this node).
    #[serde(serialize_with = "ms")]
    pub last_heard: Duration,
    /// How far it has delivered each stream it reported, in stream order.
    pub streams: Vec<MemberStream>,
    /// The ids of the keys it holds, the one it sends with first, as its
    /// last `Report` said (empty: it uses no keys, or has not reported).
    pub keys: Vec<u32>,
    /// The key id of its last authenticated datagram heard (`None`: it
    /// sends without keys, or was not heard since).
    pub sends_with: Option<u32>,
}

/// How far a member has delivered one stream.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberStream {
    /// The stream.
    pub stream: u64,
    /// The stream's node name, if known here.
    pub node: Option<String>,
    /// Every seq below this was delivered, or covered by a `Reset`.
    pub delivered: u64,
    /// How many events of the stream, as far as this node knows it, the
    /// member had not delivered when it reported.
    pub lag: u64,
    /// One past the highest seq given up with a `Reset` (0: none).
    pub reset_end: u64,
    /// How long ago the member reported this (zero for this node).
    #[serde(serialize_with = "ms")]
    pub reported: Duration,
    /// For this node's own view of a stream only: its staleness bound
    /// (see [`Staleness`]).
    #[serde(serialize_with = "ms_opt")]
    pub staleness: Option<Duration>,
}

/// A member named in a [`ConfirmReport`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct MemberRef {
    /// Its name, if it was heard.
    pub name: Option<String>,
    /// Its stream id.
    pub stream: u64,
}

impl std::fmt::Display for MemberRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.name {
            Some(n) => write!(f, "{n}"),
            None => write!(f, "{:016x}", self.stream),
        }
    }
}

/// The outcome of a confirmation: for every member that was live when it
/// was asked for, what became of the events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfirmReport {
    /// The publishing stream.
    pub stream: u64,
    /// The events confirmed.
    pub seqs: Range<u64>,
    /// Members that delivered every one of the events.
    pub confirmed: Vec<MemberRef>,
    /// Members that delivered them or a `Reset` after them (a `Reset` gave
    /// up at least one): they cleared their caches instead.
    pub covered_by_reset: Vec<MemberRef>,
    /// Members that left (`Goodbye`) or whose lease expired before they
    /// answered.
    pub departed: Vec<MemberRef>,
    /// Members that had not answered at the deadline.
    pub pending: Vec<MemberRef>,
    /// From the request to the outcome.
    #[serde(serialize_with = "ms")]
    pub elapsed: Duration,
}

impl ConfirmReport {
    /// True when no member is pending: every member live at the request
    /// has the events, cleared its cache, or is gone.
    pub fn is_complete(&self) -> bool {
        self.pending.is_empty()
    }
}

/// How stale this node's cache may be without it knowing
/// ([`crate::Node::staleness`]).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Staleness {
    /// The largest bound over every stream followed; while isolated, at
    /// least the time since any member was heard.
    #[serde(serialize_with = "ms")]
    pub worst: Duration,
    /// Nobody has been heard for longer than the lease, and a member that
    /// was live when the silence began died in it: the node is probably cut
    /// off. When it hears the cluster again it Resets (`isolated`).
    pub isolated: bool,
    /// Per stream, in stream order.
    pub streams: Vec<StreamStaleness>,
}

/// The staleness bound of one stream: the time since this node last had
/// proof that it held everything the stream had sent.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StreamStaleness {
    /// The stream.
    pub stream: u64,
    /// Its node's name, if known.
    pub node: Option<String>,
    /// The bound.
    #[serde(serialize_with = "ms")]
    pub staleness: Duration,
}

/// What one node knows of one member.
#[derive(Debug)]
struct Entry {
    name: Option<Arc<str>>,
    addr: Option<SocketAddr>,
    receive_only: bool,
    last_heard: Instant,
    state: Liveness,
    /// When it left or died.
    since: Instant,
    /// Its reported positions, by stream, and when each was reported.
    positions: HashMap<u64, (Position, Instant)>,
    /// The key ids it holds (its last `Report`), and the key of its last
    /// datagram.
    keys: Vec<u32>,
    sends_with: Option<u32>,
}

/// A confirmation in progress.
#[derive(Debug)]
struct Confirm {
    id: u64,
    seqs: Range<u64>,
    started: Instant,
    deadline: Instant,
    waiting: BTreeMap<u64, Option<Arc<str>>>,
    confirmed: Vec<MemberRef>,
    covered: Vec<MemberRef>,
    departed: Vec<MemberRef>,
}

fn member_ref(stream: u64, name: &Option<Arc<str>>) -> MemberRef {
    MemberRef {
        name: name.as_deref().map(str::to_owned),
        stream,
    }
}

/// The membership view, the confirmations this node awaits, and the
/// acknowledgements it owes.
#[derive(Debug, Default)]
pub(crate) struct Members {
    table: HashMap<u64, Entry>,
    confirms: Vec<Confirm>,
    next_id: u64,
    done: VecDeque<(u64, ConfirmReport)>,
    /// Retries of the current ack requests so far.
    pub ask_tries: u32,
    /// `AckRequest`s heard and not answered yet: stream → seq wanted.
    pub ack_wanted: HashMap<u64, u64>,
    /// Streams whose acknowledgement goes in the next `Report`.
    pub ack_ready: Vec<u64>,
    /// What the last reports said of each stream (`delivered`).
    pub reported: HashMap<u64, u64>,
    /// Streams retired here (Goodbye), still reported so that a member
    /// that missed them learns of them.
    pub ended: VecDeque<(Position, Instant)>,
    /// Where the turn over `ended` resumes.
    pub ended_from: usize,
    /// Where the round-robin refresh of unchanged positions resumes.
    pub refresh_from: u64,
    /// Set when the node found itself cut off: since when nobody was heard.
    pub isolated_since: Option<Instant>,
    /// When any other member was last heard.
    pub last_heard_any: Option<Instant>,
    /// Members forgotten because the table was full.
    pub dropped: u64,
    /// When this node last Reset for a partition (isolated, or a member
    /// back from the dead): one Reset per heal, not one per member.
    pub heal_reset: Option<Instant>,
}

impl Members {
    /// The address member `stream`'s datagrams come from, if heard.
    pub fn addr_of(&self, stream: u64) -> Option<SocketAddr> {
        self.table.get(&stream).and_then(|e| e.addr)
    }

    /// A datagram of member `stream` arrived. Returns how long nobody was
    /// heard if the node was isolated until now.
    pub fn heard(
        &mut self,
        now: Instant,
        stream: u64,
        addr: Option<SocketAddr>,
        receive_only: bool,
        max: usize,
        healed_after: Duration,
    ) -> Option<Duration> {
        self.last_heard_any = Some(now);
        let mut healed = None;
        if !self.table.contains_key(&stream) {
            if self.table.len() >= max {
                self.make_room(max);
            }
            if self.table.len() >= max {
                self.dropped += 1;
            } else {
                self.table.insert(
                    stream,
                    Entry {
                        name: None,
                        addr,
                        receive_only,
                        last_heard: now,
                        state: Liveness::Live,
                        since: now,
                        positions: HashMap::new(),
                        keys: Vec::new(),
                        sends_with: None,
                    },
                );
            }
        }
        if let Some(e) = self.table.get_mut(&stream) {
            e.receive_only = receive_only;
            if addr.is_some() {
                e.addr = addr;
            }
            if e.state == Liveness::Dead {
                // Back: stream ids are new at every start, so a dead member
                // heard again was cut off from this node, not restarted.
                // Past `healed_after`, publishers that came and went on its
                // side may no longer be in anyone's reports: this node
                // cannot prove it missed nothing.
                let unheard = now.saturating_duration_since(e.last_heard);
                if unheard >= healed_after
                    && self.heal_reset.is_none_or(|t| t + healed_after <= now)
                {
                    healed = Some(unheard);
                }
                e.state = Liveness::Live;
            }
            e.last_heard = now;
        }
        let isolated = self
            .isolated_since
            .take()
            .map(|since| now.saturating_duration_since(since));
        let reset = isolated.or(healed);
        if reset.is_some() {
            self.heal_reset = Some(now);
        }
        reset
    }

    /// Forgets members that left or died, oldest first, to make room.
    fn make_room(&mut self, max: usize) {
        let mut gone: Vec<(Instant, u64)> = self
            .table
            .iter()
            .filter(|(_, e)| e.state != Liveness::Live)
            .map(|(s, e)| (e.since, *s))
            .collect();
        gone.sort();
        for (_, s) in gone.into_iter().take(self.table.len() + 1 - max) {
            self.table.remove(&s);
        }
    }

    /// Records the name a member announced.
    pub fn named(&mut self, stream: u64, name: &str) {
        if let Some(e) = self.table.get_mut(&stream) {
            if !name.is_empty() && e.name.as_deref() != Some(name) {
                e.name = Some(Arc::from(name));
            }
        }
    }

    /// The member's last datagram was sealed with key `key_id` (`None`:
    /// not authenticated).
    pub fn sent_with(&mut self, stream: u64, key_id: Option<u32>) {
        if let Some(e) = self.table.get_mut(&stream) {
            e.sends_with = key_id;
        }
    }

    /// The member's `Report` says it holds the keys `keys` (bounded by the
    /// decoder).
    pub fn holds(&mut self, stream: u64, keys: &[u32]) {
        if let Some(e) = self.table.get_mut(&stream) {
            if e.keys != keys {
                e.keys = keys.to_vec();
            }
        }
    }

    /// The member said `Goodbye`.
    pub fn left(&mut self, now: Instant, stream: u64) {
        if let Some(e) = self.table.get_mut(&stream) {
            if e.state != Liveness::Left {
                e.state = Liveness::Left;
                e.since = now;
            }
            self.depart(stream);
        }
    }

    /// The member sent events after a `Goodbye` marked it as left: that
    /// `Goodbye` was forged (a member that left sends none), so it is live
    /// again.
    pub fn back(&mut self, now: Instant, stream: u64) {
        if let Some(e) = self.table.get_mut(&stream) {
            if e.state == Liveness::Left {
                e.state = Liveness::Live;
                e.since = now;
                e.last_heard = now;
            }
        }
    }

    /// Resolves `stream` as departed in every confirmation.
    fn depart(&mut self, stream: u64) {
        for c in &mut self.confirms {
            if let Some(name) = c.waiting.remove(&stream) {
                c.departed.push(member_ref(stream, &name));
            }
        }
    }

    /// A member's `Report`. `me` is this node's stream; returns true when
    /// it told something new about it.
    pub fn report(
        &mut self,
        now: Instant,
        from: u64,
        positions: &[Position],
        me: u64,
        max_positions: usize,
    ) -> bool {
        let Some(e) = self.table.get_mut(&from) else {
            return false;
        };
        let mut mine = false;
        for p in positions {
            if p.stream == me {
                mine = true;
            }
            let room = e.positions.len() < max_positions || p.stream == me;
            match e.positions.get_mut(&p.stream) {
                // Positions only move forward; a late, older report changes
                // nothing.
                Some(old) if p.delivered >= old.0.delivered => *old = (*p, now),
                Some(_) => {}
                None if room => {
                    e.positions.insert(p.stream, (*p, now));
                }
                None => {}
            }
        }
        if mine {
            let name = e.name.clone();
            if let Some((p, _)) = e.positions.get(&me).copied() {
                for c in &mut self.confirms {
                    if p.delivered >= c.seqs.end && c.waiting.remove(&from).is_some() {
                        let r = member_ref(from, &name);
                        if p.reset_end > c.seqs.start {
                            c.covered.push(r);
                        } else {
                            c.confirmed.push(r);
                        }
                    }
                }
            }
        }
        mine
    }

    /// Starts a confirmation of `seqs` of this node's stream: every member
    /// live now must answer. Returns its id.
    pub fn confirm(&mut self, now: Instant, seqs: Range<u64>, deadline: Instant, me: u64) -> u64 {
        self.next_id += 1;
        let id = self.next_id;
        let mut c = Confirm {
            id,
            seqs: seqs.clone(),
            started: now,
            deadline,
            waiting: BTreeMap::new(),
            confirmed: Vec::new(),
            covered: Vec::new(),
            departed: Vec::new(),
        };
        for (s, e) in &self.table {
            if *s == me || e.state != Liveness::Live {
                continue;
            }
            match e.positions.get(&me) {
                Some((p, _)) if p.delivered >= seqs.end => {
                    let r = member_ref(*s, &e.name);
                    if p.reset_end > seqs.start {
                        c.covered.push(r);
                    } else {
                        c.confirmed.push(r);
                    }
                }
                _ => {
                    c.waiting.insert(*s, e.name.clone());
                }
            }
        }
        self.confirms.push(c);
        self.ask_tries = 0;
        self.finish(now);
        id
    }

    /// Moves resolved confirmations (and those past their deadline) to the
    /// outcomes.
    pub fn finish(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.confirms.len() {
            let c = &self.confirms[i];
            if c.waiting.is_empty() || now >= c.deadline {
                let c = self.confirms.swap_remove(i);
                let mut pending: Vec<MemberRef> = c
                    .waiting
                    .iter()
                    .map(|(s, n)| {
                        let name = self
                            .table
                            .get(s)
                            .and_then(|e| e.name.clone())
                            .or_else(|| n.clone());
                        member_ref(*s, &name)
                    })
                    .collect();
                let (mut confirmed, mut covered, mut departed) =
                    (c.confirmed, c.covered, c.departed);
                for v in [&mut confirmed, &mut covered, &mut departed, &mut pending] {
                    v.sort();
                }
                self.done.push_back((
                    c.id,
                    ConfirmReport {
                        stream: 0,
                        seqs: c.seqs,
                        confirmed,
                        covered_by_reset: covered,
                        departed,
                        pending,
                        elapsed: now.saturating_duration_since(c.started),
                    },
                ));
            } else {
                i += 1;
            }
        }
    }

    /// The next outcome of a confirmation.
    pub fn poll_done(&mut self) -> Option<(u64, ConfirmReport)> {
        self.done.pop_front()
    }

    /// True while a confirmation waits for answers.
    pub fn confirming(&self) -> bool {
        !self.confirms.is_empty()
    }

    /// The earliest confirmation deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.confirms.iter().map(|c| c.deadline).min()
    }

    /// Every member some confirmation still waits for, in order.
    pub fn unanswered(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self
            .confirms
            .iter()
            .flat_map(|c| c.waiting.keys().copied())
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Expires members not heard within `lease` (resolving them as
    /// departed), forgets members gone for longer than `forget`, and finds
    /// out whether this node is isolated.
    pub fn tick(&mut self, now: Instant, lease: Duration, forget: Duration) {
        let mut died = Vec::new();
        for (s, e) in &mut self.table {
            if e.state == Liveness::Live && e.last_heard + lease <= now {
                e.state = Liveness::Dead;
                e.since = now;
                died.push(*s);
            }
        }
        for s in died {
            tracing::debug!(stream = format_args!("{s:016x}"), "member lease expired");
            self.depart(s);
        }
        self.table
            .retain(|_, e| e.state == Liveness::Live || e.since + forget > now);
        // Positions not reported again for `forget` are dropped (a refresh
        // reports every live one well within it).
        for e in self.table.values_mut() {
            e.positions.retain(|_, (_, at)| *at + forget > now);
        }
        let any_live = self.table.values().any(|e| e.state == Liveness::Live);
        // Isolated: nobody at all heard for the lease, and a member that
        // was live when the silence began died in it (rather than said
        // Goodbye): it crashed, or this node is cut off, and this node cannot
        // tell which. A short-lived publisher heard within the lease proves
        // the node is not cut off, although no member is live (its only
        // peer may be the one cut off); a member dead before the silence
        // began says nothing about it.
        let cut_off = self.last_heard_any.is_some_and(|since| {
            since + lease <= now
                && self
                    .table
                    .values()
                    .any(|e| e.state == Liveness::Dead && e.last_heard + lease > since)
        });
        if !any_live && cut_off && self.isolated_since.is_none() {
            let since = self.last_heard_any.unwrap_or(now);
            tracing::warn!(
                silent_ms = now.saturating_duration_since(since).as_millis() as u64,
                "no member heard within the lease: this node may be cut off"
            );
            self.isolated_since = Some(since);
        }
        self.finish(now);
    }

    /// Where every live member has delivered this node's stream to: the
    /// lowest of their positions; `None` if a live member has not reported
    /// one.
    pub fn stable(&self, me: u64) -> Option<u64> {
        let mut low: Option<u64> = None;
        for (s, e) in &self.table {
            if *s == me || e.state != Liveness::Live {
                continue;
            }
            let p = e.positions.get(&me)?.0.delivered;
            low = Some(low.map_or(p, |l| l.min(p)));
        }
        low
    }

    /// Members known (live, left or dead, until forgotten): a forged
    /// `Goodbye` cannot lower it.
    pub fn known(&self) -> usize {
        self.table.len()
    }

    /// Live members.
    pub fn live(&self) -> usize {
        self.table
            .values()
            .filter(|e| e.state == Liveness::Live)
            .count()
    }

    /// The view: every member but this node, with `end_of(stream)` the
    /// position of each stream as this node knows it (for lags) and
    /// `name_of(stream)` its node's name.
    pub fn view(
        &self,
        now: Instant,
        end_of: impl Fn(u64) -> Option<u64>,
        name_of: impl Fn(u64) -> Option<String>,
    ) -> Vec<Member> {
        let mut v: Vec<Member> = self
            .table
            .iter()
            .map(|(s, e)| {
                let mut streams: Vec<MemberStream> = e
                    .positions
                    .values()
                    .map(|(p, at)| MemberStream {
                        stream: p.stream,
                        node: name_of(p.stream),
                        delivered: p.delivered,
                        lag: end_of(p.stream).map_or(0, |end| end.saturating_sub(p.delivered)),
                        reset_end: p.reset_end,
                        reported: now.saturating_duration_since(*at),
                        staleness: None,
                    })
                    .collect();
                streams.sort_by_key(|m| m.stream);
                Member {
                    stream: *s,
                    name: e.name.as_deref().map(str::to_owned),
                    addr: e.addr,
                    this_node: false,
                    receive_only: e.receive_only,
                    state: e.state,
                    last_heard: now.saturating_duration_since(e.last_heard),
                    streams,
                    keys: e.keys.clone(),
                    sends_with: e.sends_with,
                }
            })
            .collect();
        v.sort_by_key(|m| m.stream);
        v
    }

    /// A member's name, if heard.
    pub fn name(&self, stream: u64) -> Option<Arc<str>> {
        self.table.get(&stream).and_then(|e| e.name.clone())
    }
}
