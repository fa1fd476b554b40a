//! Staged appends of named logs, for the redb store.
//!
//! A B-tree keyed by `(log, seq)` keeps each log in pages of its own, so a
//! commit that appends one record to each of a few hundred logs (a chat
//! message's entry and one inbox reference per member) rewrites a few
//! hundred pages: copy-on-write makes the page, not the record, the unit
//! of cost. Appends therefore go first to one table keyed by commit order,
//! where a commit touches only the table's right edge, and move into their
//! logs in bulk (many records per page) once enough have gathered. A move
//! is part of an ordinary commit, so a crash finds each record in exactly
//! one of the two tables.
//!
//! The staged records are also held here, in memory and bounded: reads of
//! a log's newest records (what a device is fed right after the commit)
//! are answered without touching the B-tree.
//!
//! Per log, every staged record is newer than every record in the log's
//! table, because moves take the oldest staged records first (or all of a
//! log's, before a trim). Reads rely on that.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::RwLock;
use rustc_hash::FxHashMap;

use crate::store::LogRecord;

/// How much may be staged before a commit moves records (the memory the
/// staging holds is about this much).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StagingLimits {
    /// More staged records than this start a move of half as many.
    pub records: usize,
    /// More staged bytes than this start a move.
    pub bytes: usize,
}

impl Default for StagingLimits {
    fn default() -> Self {
        StagingLimits {
            records: 8192,
            bytes: 8 << 20,
        }
    }
}

/// The staged records, as committed.
#[derive(Default)]
pub(crate) struct Staging {
    limits: StagingLimits,
    state: RwLock<State>,
}

#[derive(Default)]
struct State {
    /// Staging keys in commit order with their log; a key whose record has
    /// moved out of turn (before a trim) is skipped when met.
    order: VecDeque<(u64, Arc<str>)>,
    logs: FxHashMap<Arc<str>, Tail>,
    records: usize,
    bytes: usize,
    next_key: u64,
}

/// One log's staged records.
#[derive(Default)]
struct Tail {
    /// `(staging key, record)`, ascending in both.
    records: VecDeque<(u64, LogRecord)>,
    ids: FxHashMap<String, u64>,
}

impl Tail {
    fn holds(&self, key: u64) -> bool {
        self.records.binary_search_by_key(&key, |r| r.0).is_ok()
    }
}

/// A staged record: its staging key, its log, the record.
pub(crate) type Staged = (u64, Arc<str>, LogRecord);
/// A staged record, borrowed.
pub(crate) type StagedRef<'a> = (u64, &'a Arc<str>, &'a LogRecord);

/// What one commit changes in the staging, applied once it is durable.
#[derive(Default)]
pub(crate) struct Step {
    next_key: u64,
    /// Staged by this commit (and not moved by it).
    added: Vec<Staged>,
    /// Per log, the highest key moved out by this commit (each log's moved
    /// records are the oldest it had).
    moved: FxHashMap<Arc<str>, u64>,
}

impl Step {
    /// A key for the next record staged.
    pub(crate) fn key(&mut self) -> u64 {
        let k = self.next_key;
        self.next_key += 1;
        k
    }

    /// Stages `record` of `log` under `key`.
    pub(crate) fn stage(&mut self, key: u64, log: Arc<str>, record: LogRecord) {
        self.added.push((key, log, record));
    }

    /// Takes out the records of `log` this commit staged.
    fn take_added(&mut self, log: &str) -> Vec<Staged> {
        let (mine, rest) = std::mem::take(&mut self.added)
            .into_iter()
            .partition(|s| &*s.1 == log);
        self.added = rest;
        mine
    }

    /// Notes that these records move out.
    fn moved<'a>(&mut self, records: impl IntoIterator<Item = (u64, &'a Arc<str>)>) {
        for (key, log) in records {
            match self.moved.get_mut(log) {
                Some(m) => *m = (*m).max(key),
                None => {
                    self.moved.insert(log.clone(), key);
                }
            }
        }
    }

    fn has_moved(&self, log: &str, key: u64) -> bool {
        self.moved.get(log).is_some_and(|&m| key <= m)
    }
}

impl Staging {
    /// An empty staging with these limits.
    pub(crate) fn new(limits: StagingLimits) -> Staging {
        Staging {
            limits,
            state: RwLock::default(),
        }
    }

    /// Starts a commit's changes.
    pub(crate) fn step(&self) -> Step {
        Step {
            next_key: self.state.read().next_key,
            ..Step::default()
        }
    }

    /// Loads what the staging table holds, in key order (at open).
    pub(crate) fn load(&self, staged: Vec<Staged>) {
        let mut s = self.state.write();
        for r in staged {
            s.next_key = s.next_key.max(r.0 + 1);
            s.add(r);
        }
    }

    /// Applies a durable commit's changes.
    pub(crate) fn apply(&self, step: Step) {
        let mut s = self.state.write();
        s.next_key = step.next_key;
        for (log, upto) in &step.moved {
            s.remove_upto(log, *upto);
        }
        while let Some((key, log)) = s.order.front() {
            if s.logs.get(log).is_some_and(|t| t.holds(*key)) {
                break;
            }
            s.order.pop_front();
        }
        for r in step.added {
            s.add(r);
        }
    }

    /// How many of the oldest staged records this commit should move (0:
    /// none). Past a limit, enough to get back to half of it, so the
    /// staging stays bounded whatever one commit appends.
    pub(crate) fn to_move(&self, step: &Step) -> usize {
        let s = self.state.read();
        let added: usize = step.added.iter().map(|r| size(&r.2)).sum();
        let (records, bytes) = (s.records + step.added.len(), s.bytes + added);
        let mut n = 0;
        if records > self.limits.records {
            n = records - self.limits.records / 2;
        }
        if bytes > self.limits.bytes {
            // Records are of any size: move half of what is staged.
            n = n.max(s.records.div_ceil(2));
        }
        n
    }

    /// Moves up to `n` of the oldest staged records that `step` has not
    /// moved yet, in key order: `f` writes them into their logs (borrowed:
    /// the staging stays read-locked meanwhile, which holds up only this
    /// commit's own `apply`), then `step` notes them moved.
    pub(crate) fn move_oldest<E>(
        &self,
        n: usize,
        step: &mut Step,
        f: impl FnOnce(&[StagedRef<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let s = self.state.read();
        let mut out = Vec::with_capacity(n.min(s.records));
        // The next unvisited record of each log seen so far.
        let mut at: FxHashMap<&str, usize> = FxHashMap::default();
        for (key, log) in &s.order {
            if out.len() >= n {
                break;
            }
            let Some(tail) = s.logs.get(log) else {
                continue;
            };
            let i = at.entry(log).or_insert(0);
            match tail.records.get(*i) {
                Some((k, r)) if k == key => {
                    *i += 1;
                    if !step.has_moved(log, *key) {
                        out.push((*key, log, r));
                    }
                }
                _ => {} // moved out of turn
            }
        }
        f(&out)?;
        step.moved(out.iter().map(|r| (r.0, r.1)));
        Ok(())
    }

    /// Moves every staged record of `log` (this commit's too), the same
    /// way.
    pub(crate) fn move_log<E>(
        &self,
        log: &str,
        step: &mut Step,
        f: impl FnOnce(&[StagedRef<'_>]) -> Result<(), E>,
    ) -> Result<(), E> {
        let s = self.state.read();
        let added = step.take_added(log);
        let mut out: Vec<StagedRef<'_>> = match s.logs.get_key_value(log) {
            Some((name, tail)) => tail
                .records
                .iter()
                .filter(|(k, _)| !step.has_moved(log, *k))
                .map(|(k, r)| (*k, name, r))
                .collect(),
            None => Vec::new(),
        };
        out.extend(added.iter().map(|r| (r.0, &r.1, &r.2)));
        f(&out)?;
        step.moved(out.iter().map(|r| (r.0, r.1)));
        Ok(())
    }

    /// Up to `limit` staged records of `log` from `from` on, ascending, and
    /// the first staged sequence number of the log (`None`: none staged).
    pub(crate) fn read(&self, log: &str, from: u64, limit: usize) -> (Vec<LogRecord>, Option<u64>) {
        let s = self.state.read();
        let Some(tail) = s.logs.get(log) else {
            return (Vec::new(), None);
        };
        let first = tail.records.front().map(|r| r.1.seq);
        let start = tail.records.partition_point(|r| r.1.seq < from);
        let out = tail
            .records
            .range(start..)
            .take(limit)
            .map(|r| r.1.clone())
            .collect();
        (out, first)
    }

    /// Up to `limit` staged records of `log` below `before`, descending,
    /// and the first staged sequence number of the log.
    pub(crate) fn read_back(
        &self,
        log: &str,
        before: u64,
        limit: usize,
    ) -> (Vec<LogRecord>, Option<u64>) {
        let s = self.state.read();
        let Some(tail) = s.logs.get(log) else {
            return (Vec::new(), None);
        };
        let first = tail.records.front().map(|r| r.1.seq);
        let end = tail.records.partition_point(|r| r.1.seq < before);
        let out = tail
            .records
            .range(..end)
            .rev()
            .take(limit)
            .map(|r| r.1.clone())
            .collect();
        (out, first)
    }

    /// The last staged sequence number of `log`.
    pub(crate) fn last(&self, log: &str) -> Option<u64> {
        let s = self.state.read();
        s.logs.get(log)?.records.back().map(|r| r.1.seq)
    }

    /// The sequence number of the staged record of `log` with `id`.
    pub(crate) fn seq_of(&self, log: &str, id: &str) -> Option<u64> {
        let s = self.state.read();
        s.logs.get(log)?.ids.get(id).copied()
    }
}

impl State {
    fn add(&mut self, (key, log, record): Staged) {
        self.records += 1;
        self.bytes += size(&record);
        self.order.push_back((key, log.clone()));
        let tail = self.logs.entry(log).or_default();
        if let Some(id) = &record.id {
            tail.ids.insert(id.clone(), record.seq);
        }
        tail.records.push_back((key, record));
    }

    fn remove_upto(&mut self, log: &str, upto: u64) {
        let Some(tail) = self.logs.get_mut(log) else {
            return;
        };
        while tail.records.front().is_some_and(|r| r.0 <= upto) {
            let Some((_, r)) = tail.records.pop_front() else {
                break;
            };
            self.records -= 1;
            self.bytes -= size(&r);
            if let Some(id) = &r.id {
                tail.ids.remove(id);
            }
        }
        if tail.records.is_empty() {
            self.logs.remove(log);
        }
    }
}

/// What a staged record costs in memory, roughly.
fn size(r: &LogRecord) -> usize {
    64 + r.data.len() + r.id.as_ref().map_or(0, |i| i.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(seq: u64, id: Option<&str>) -> LogRecord {
        LogRecord {
            seq,
            id: id.map(str::to_owned),
            time_ms: 0,
            data: bytes::Bytes::from(format!("r{seq}")),
        }
    }

    fn stage(s: &Staging, recs: &[(&str, u64)]) {
        let mut step = s.step();
        for (log, seq) in recs {
            let k = step.key();
            step.stage(k, Arc::from(*log), rec(*seq, Some(&format!("id{seq}"))));
        }
        s.apply(step);
    }

    fn seqs(v: &[LogRecord]) -> Vec<u64> {
        v.iter().map(|r| r.seq).collect()
    }

    #[test]
    fn reads_both_ways_and_finds_ids() {
        let s = Staging::default();
        stage(&s, &[("a", 1), ("b", 1), ("a", 2), ("a", 3)]);
        assert_eq!(seqs(&s.read("a", 2, 10).0), vec![2, 3]);
        assert_eq!(s.read("a", 0, 10).1, Some(1));
        assert_eq!(seqs(&s.read("a", 1, 2).0), vec![1, 2]);
        assert_eq!(seqs(&s.read_back("a", 3, 10).0), vec![2, 1]);
        assert_eq!(s.last("a"), Some(3));
        assert_eq!(s.last("c"), None);
        assert_eq!(s.seq_of("a", "id2"), Some(2));
        assert_eq!(s.seq_of("b", "id2"), None);
    }

    #[test]
    fn moves_take_the_oldest_first_and_skip_what_moved_out_of_turn() {
        let s = Staging::default();
        stage(&s, &[("a", 1), ("b", 1), ("a", 2), ("b", 2), ("a", 3)]);
        // b moves whole (a trim), then the two oldest others.
        let mut step = s.step();
        let mut b = 0;
        s.move_log("b", &mut step, |v| {
            b = v.len();
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(b, 2);
        let mut old = Vec::new();
        s.move_oldest(2, &mut step, |v| {
            old = v.iter().map(|r| (r.1.to_string(), r.2.seq)).collect();
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(old, vec![("a".to_string(), 1), ("a".to_string(), 2)]);
        s.apply(step);
        assert_eq!(s.last("b"), None);
        assert_eq!(s.read("a", 0, 10).1, Some(3));
        assert_eq!(s.seq_of("a", "id1"), None, "moved ids leave");
        let mut step = s.step();
        let mut left = 0;
        s.move_oldest(10, &mut step, |v| {
            left = v.len();
            Ok::<_, ()>(())
        })
        .unwrap();
        assert_eq!(left, 1);
        assert_eq!(step.next_key, 5, "keys are never reused");
    }
}
