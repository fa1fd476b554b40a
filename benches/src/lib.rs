//! Pieces of the load generator that are worth testing on their own:
//! the payload format and the per-stream loss / duplicate / order tracker.

use std::sync::OnceLock;
use std::time::Instant;

/// Bytes of header at the start of every payload: stream id (u32),
/// sequence number (u64), send time in ns since the run's start (u64).
pub const HEADER: usize = 20;

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Nanoseconds since the first call in this process.
pub fn now_ns() -> u64 {
    base().elapsed().as_nanos() as u64
}

/// Builds a payload of `size` bytes (at least [`HEADER`]).
pub fn payload(stream: u32, seq: u64, size: usize) -> Vec<u8> {
    let mut p = vec![0u8; size.max(HEADER)];
    p[..4].copy_from_slice(&stream.to_be_bytes());
    p[4..12].copy_from_slice(&seq.to_be_bytes());
    p[12..20].copy_from_slice(&now_ns().to_be_bytes());
    p
}

/// Reads `(stream, seq, sent_ns)` from a payload.
pub fn parse(p: &[u8]) -> Option<(u32, u64, u64)> {
    if p.len() < HEADER {
        return None;
    }
    let stream = u32::from_be_bytes(p[..4].try_into().ok()?);
    let seq = u64::from_be_bytes(p[4..12].try_into().ok()?);
    let sent = u64::from_be_bytes(p[12..20].try_into().ok()?);
    Some((stream, seq, sent))
}

/// Per-stream delivery accounting.
#[derive(Debug, Default, Clone)]
pub struct Tracker {
    seen: Vec<u64>,
    last: Option<u64>,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Deliveries of a sequence number already received.
    pub duplicates: u64,
    /// Deliveries that arrived after a higher sequence number.
    pub reordered: u64,
}

impl Tracker {
    /// Records one delivery of `seq`.
    pub fn record(&mut self, seq: u64) {
        let (word, bit) = ((seq / 64) as usize, seq % 64);
        if self.seen.len() <= word {
            self.seen.resize(word + 1, 0);
        }
        if self.seen[word] & (1 << bit) != 0 {
            self.duplicates += 1;
            return;
        }
        self.seen[word] |= 1 << bit;
        self.unique += 1;
        if self.last.is_some_and(|l| seq < l) {
            self.reordered += 1;
        }
        self.last = Some(self.last.map_or(seq, |l| l.max(seq)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_round_trip() {
        let p = payload(7, 42, 64);
        assert_eq!(p.len(), 64);
        let (s, q, _) = parse(&p).unwrap();
        assert_eq!((s, q), (7, 42));
        assert!(parse(&p[..10]).is_none());
    }

    #[test]
    fn tracker_counts() {
        let mut t = Tracker::default();
        for s in [0, 1, 3, 2, 3, 200] {
            t.record(s);
        }
        assert_eq!((t.unique, t.duplicates, t.reordered), (5, 1, 1));
    }
}
