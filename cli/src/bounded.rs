//! A `VecDeque` kept to a bound, for the agent's feed and the bridge.

use std::collections::VecDeque;

/// Appends `item`, first dropping the oldest entry when `q` holds `bound`
/// already; says whether one was dropped. Room first: taking one more
/// before the oldest leaves doubles the array past the bound (2^19 slots
/// for 2^18 entries), and the ring then touches its pages one by one.
pub fn push_bounded<T>(q: &mut VecDeque<T>, bound: usize, item: T) -> bool {
    let full = q.len() >= bound;
    if full {
        q.pop_front();
    }
    q.push_back(item);
    full
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A full queue drops its oldest before it takes a new entry: the
    /// newest `bound` stay, and the array never grows past the bound.
    #[test]
    fn a_full_queue_keeps_its_array_within_the_bound() {
        let mut q = VecDeque::new();
        let dropped: Vec<bool> = (0..1100u32)
            .map(|i| push_bounded(&mut q, 1024, i))
            .collect();
        assert_eq!(dropped.iter().filter(|d| **d).count(), 76);
        assert!(!dropped[1023] && dropped[1024]);
        assert_eq!(q.len(), 1024);
        assert_eq!((q.front(), q.back()), (Some(&76), Some(&1099)));
        assert!(q.capacity() < 2048, "{}", q.capacity());
    }
}
