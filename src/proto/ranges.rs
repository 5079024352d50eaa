//! The set of missing sequence ranges of one stream ("gaps"), each with its
//! own repair state.
//!
//! A receiver only stores what it is *missing*: everything between its
//! starting point and the stream's known end that is not a gap has arrived.
//! Arrivals split gaps; resets remove them. The number of gaps is bounded
//! by the caller (`max_gaps`). Pure data structure: no clock, no I/O.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::wire::SeqRange;

/// One missing range and where its recovery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gap {
    /// One past the last missing seq.
    pub end: u64,
    /// When the gap was first noticed.
    pub opened: Instant,
    /// When the receiver acts on it next (NAK, or give up).
    pub due: Instant,
    /// How many NAKs were sent (or suppressed) for it so far.
    pub tries: u32,
    /// When this node last sent a `Nak` for it (the time to its repair is
    /// a sample of the round trip).
    pub asked: Option<Instant>,
    /// Opened again because a position claim heard after it was given up
    /// showed it again: given up once more, it is taken as covered by that
    /// `Reset` (see the receiver's doubtful ranges).
    pub checked: bool,
}

/// Missing ranges, keyed by their first seq; never overlapping or empty.
#[derive(Debug, Default, Clone)]
pub struct GapSet {
    gaps: BTreeMap<u64, Gap>,
}

impl GapSet {
    /// No gaps.
    pub fn new() -> Self {
        GapSet::default()
    }

    /// Number of disjoint missing ranges.
    pub fn len(&self) -> usize {
        self.gaps.len()
    }

    /// True when nothing is missing.
    pub fn is_empty(&self) -> bool {
        self.gaps.is_empty()
    }

    /// Adds a missing range `start..gap.end` (must not overlap an existing one).
    pub fn insert(&mut self, start: u64, gap: Gap) {
        debug_assert!(start < gap.end);
        debug_assert!(self.overlapping(start, gap.end).next().is_none());
        self.gaps.insert(start, gap);
    }

    /// If `seq` is missing, marks it arrived (splitting its gap) and returns
    /// the gap it was in.
    pub fn fill(&mut self, seq: u64) -> Option<Gap> {
        let (&start, &gap) = self.gaps.range(..=seq).next_back()?;
        if seq >= gap.end {
            return None;
        }
        self.gaps.remove(&start);
        if start < seq {
            self.gaps.insert(start, Gap { end: seq, ..gap });
        }
        if seq + 1 < gap.end {
            self.gaps.insert(seq + 1, gap);
        }
        Some(gap)
    }

    #[cfg(test)]
    /// True if `seq` is missing.
    pub fn contains(&self, seq: u64) -> bool {
        self.gaps
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, g)| seq < g.end)
    }

    /// The lowest missing range.
    pub fn first(&self) -> Option<(u64, Gap)> {
        self.gaps.iter().next().map(|(s, g)| (*s, *g))
    }

    /// Removes and returns the gap starting at `start`.
    pub fn remove(&mut self, start: u64) -> Option<Gap> {
        self.gaps.remove(&start)
    }

    /// Removes every missing seq in `start..end`; returns the parts
    /// removed (each gap clipped to the range), in order.
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<(u64, Gap)> {
        let hit: Vec<(u64, Gap)> = self.overlapping(start, end).collect();
        let mut removed = Vec::with_capacity(hit.len());
        for (s, g) in hit {
            self.gaps.remove(&s);
            if s < start {
                self.gaps.insert(s, Gap { end: start, ..g });
            }
            if g.end > end {
                self.gaps.insert(end, g);
            }
            removed.push((
                s.max(start),
                Gap {
                    end: g.end.min(end),
                    ..g
                },
            ));
        }
        removed
    }

    /// Gaps intersecting `start..end`, in order.
    pub fn overlapping(&self, start: u64, end: u64) -> impl Iterator<Item = (u64, Gap)> + '_ {
        // The gap starting before `start` may reach into the range.
        let before = self
            .gaps
            .range(..start)
            .next_back()
            .filter(|(_, g)| g.end > start);
        before
            .into_iter()
            .chain(self.gaps.range(start..end))
            .map(|(s, g)| (*s, *g))
    }

    /// All gaps, in order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, Gap)> + '_ {
        self.gaps.iter().map(|(s, g)| (*s, *g))
    }

    /// Mutable access to the gap starting at `start`.
    pub fn get_mut(&mut self, start: u64) -> Option<&mut Gap> {
        self.gaps.get_mut(&start)
    }

    /// The earliest `due` time over all gaps.
    pub fn next_due(&self) -> Option<Instant> {
        self.gaps.values().map(|g| g.due).min()
    }

    #[cfg(test)]
    /// Total number of missing seqs.
    pub fn missing_count(&self) -> u64 {
        self.gaps.iter().map(|(s, g)| g.end - s).sum()
    }

    /// The smallest range covering every gap.
    pub fn hull(&self) -> Option<SeqRange> {
        let first = self.gaps.iter().next()?;
        let last = self.gaps.iter().next_back()?;
        Some((*first.0, last.1.end))
    }
}

/// A bounded set of disjoint seq ranges without metadata: the ranges a
/// receiver gave up on (after a `Reset`), so that an event of them that
/// still arrives late is delivered rather than taken for a duplicate, and
/// those of them it gave up before anything but a position claim showed
/// that they existed; and the ranges a sender was asked to repair.
///
/// Past its bound the set over-approximates: the two ranges closest to
/// each other are merged (a seq between them counts as in the set). For a
/// receiver that costs at most a duplicate delivery or a needless `Nak`;
/// forgetting a range instead could lose an event silently.
#[derive(Debug, Default, Clone)]
pub struct RangeSet {
    ranges: BTreeMap<u64, u64>,
    max: usize,
}

impl RangeSet {
    /// An empty set that keeps at most `max` disjoint ranges (past it, the
    /// two closest are merged).
    pub fn new(max: usize) -> Self {
        RangeSet {
            ranges: BTreeMap::new(),
            max: max.max(1),
        }
    }

    /// Adds `start..end`, merging with overlapping or adjacent ranges.
    pub fn insert(&mut self, mut start: u64, mut end: u64) {
        if start >= end {
            return;
        }
        let touching: Vec<(u64, u64)> = self
            .ranges
            .range(..=end)
            .rev()
            .take_while(|(_, e)| **e >= start)
            .map(|(s, e)| (*s, *e))
            .collect();
        for (s, e) in touching {
            self.ranges.remove(&s);
            start = start.min(s);
            end = end.max(e);
        }
        self.ranges.insert(start, end);
        while self.ranges.len() > self.max {
            self.merge_closest();
        }
    }

    /// Merges the two neighbouring ranges with the fewest seqs between them.
    fn merge_closest(&mut self) {
        let mut best: Option<(u64, u64, u64)> = None; // (distance, first start, second start)
        let mut prev: Option<(u64, u64)> = None;
        for (&s, &e) in &self.ranges {
            if let Some((ps, pe)) = prev {
                let d = s - pe;
                if best.is_none_or(|(bd, _, _)| d < bd) {
                    best = Some((d, ps, s));
                }
            }
            prev = Some((s, e));
        }
        if let Some((_, a, b)) = best {
            if let Some(end) = self.ranges.remove(&b) {
                self.ranges.insert(a, end);
            }
        }
    }

    #[cfg(test)]
    /// True if `seq` is in the set.
    pub fn contains(&self, seq: u64) -> bool {
        self.ranges
            .range(..=seq)
            .next_back()
            .is_some_and(|(_, e)| seq < *e)
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// Removes every seq in `start..end`; returns the ranges removed, in
    /// order.
    pub fn remove_range(&mut self, start: u64, end: u64) -> Vec<SeqRange> {
        if start >= end {
            return Vec::new();
        }
        let before = self
            .ranges
            .range(..start)
            .next_back()
            .filter(|(_, e)| **e > start)
            .map(|(s, e)| (*s, *e));
        let hit: Vec<(u64, u64)> = before
            .into_iter()
            .chain(self.ranges.range(start..end).map(|(s, e)| (*s, *e)))
            .collect();
        let mut removed = Vec::with_capacity(hit.len());
        for (s, e) in hit {
            self.ranges.remove(&s);
            if s < start {
                self.ranges.insert(s, start);
            }
            if e > end {
                self.ranges.insert(end, e);
            }
            removed.push((s.max(start), e.min(end)));
        }
        removed
    }

    /// The range holding `seq`, if any.
    pub fn range_of(&self, seq: u64) -> Option<SeqRange> {
        self.ranges
            .range(..=seq)
            .next_back()
            .filter(|(_, e)| seq < **e)
            .map(|(s, e)| (*s, *e))
    }

    /// All ranges, in order.
    pub fn iter(&self) -> impl Iterator<Item = SeqRange> + '_ {
        self.ranges.iter().map(|(s, e)| (*s, *e))
    }

    /// Removes `seq` if present (splitting its range); true if it was.
    pub fn take(&mut self, seq: u64) -> bool {
        let Some((&start, &end)) = self.ranges.range(..=seq).next_back() else {
            return false;
        };
        if seq >= end {
            return false;
        }
        self.ranges.remove(&start);
        if start < seq {
            self.ranges.insert(start, seq);
        }
        if seq + 1 < end {
            self.ranges.insert(seq + 1, end);
        }
        true
    }

    /// The lowest range.
    pub fn first(&self) -> Option<(u64, u64)> {
        self.ranges.first_key_value().map(|(s, e)| (*s, *e))
    }

    /// Removes the range starting at `start`.
    pub fn remove(&mut self, start: u64) {
        self.ranges.remove(&start);
    }

    #[cfg(test)]
    /// Number of disjoint ranges.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> usize {
        self.ranges.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gap(end: u64, t: Instant) -> Gap {
        Gap {
            end,
            opened: t,
            due: t,
            tries: 0,
            asked: None,
            checked: false,
        }
    }

    #[test]
    fn fill_splits_and_reports() {
        let t = Instant::now();
        let mut g = GapSet::new();
        g.insert(5, gap(10, t));
        assert!(g.fill(4).is_none());
        assert!(g.fill(10).is_none());
        assert_eq!(g.fill(7).map(|g| g.end), Some(10));
        assert!(g.fill(7).is_none(), "a seq is filled once");
        assert_eq!(
            g.iter().map(|(s, g)| (s, g.end)).collect::<Vec<_>>(),
            [(5, 7), (8, 10)]
        );
        assert!(g.fill(5).is_some());
        assert!(g.fill(9).is_some());
        assert_eq!(
            g.iter().map(|(s, g)| (s, g.end)).collect::<Vec<_>>(),
            [(6, 7), (8, 9)]
        );
        assert_eq!(g.missing_count(), 2);
        assert_eq!(g.hull(), Some((6, 9)));
        assert!(g.contains(6) && !g.contains(7) && g.contains(8));
    }

    #[test]
    fn range_set_merges_splits_and_stays_bounded() {
        let mut r = RangeSet::new(2);
        r.insert(10, 20);
        r.insert(20, 25);
        r.insert(5, 11);
        assert_eq!(r.len(), 1);
        assert!(r.take(7) && !r.take(7) && !r.take(25) && r.take(24));
        assert_eq!(r.len(), 2);
        r.insert(100, 101);
        assert_eq!(r.len(), 2, "the two closest ranges were merged");
        // Over-approximated, never forgotten: 5..7 and 8..24 merged, so 7
        // (taken) counts as in the set again.
        assert!(r.contains(5) && r.contains(7) && r.contains(23) && !r.contains(24));
        assert!(r.take(5) && r.take(100) && !r.take(100));
    }

    #[test]
    fn range_set_remove_range_clips() {
        let mut r = RangeSet::new(16);
        r.insert(1, 4);
        r.insert(6, 9);
        r.insert(12, 20);
        assert_eq!(r.remove_range(3, 14), [(3, 4), (6, 9), (12, 14)]);
        assert_eq!(r.iter().collect::<Vec<_>>(), [(1, 3), (14, 20)]);
        assert_eq!(r.range_of(15), Some((14, 20)));
        assert_eq!(r.range_of(3), None);
        assert!(r.remove_range(4, 14).is_empty());
    }

    #[test]
    fn remove_range_clips_partial_gaps() {
        let t = Instant::now();
        let mut g = GapSet::new();
        g.insert(1, gap(4, t));
        g.insert(6, gap(9, t));
        g.insert(12, gap(20, t));
        let removed: Vec<SeqRange> = (g.remove_range(3, 14).into_iter())
            .map(|(s, g)| (s, g.end))
            .collect();
        assert_eq!(removed, [(3, 4), (6, 9), (12, 14)]);
        assert_eq!(
            g.iter().map(|(s, g)| (s, g.end)).collect::<Vec<_>>(),
            [(1, 3), (14, 20)]
        );
        assert!(g.remove_range(4, 14).is_empty());
    }
}
