//! A linearizability checker for histories of independent registers.
//!
//! The model: a set of registers (keys), each initially `None`. Operations
//! are `put(key, value)`, with values that never repeat, and
//! `read(key) -> Option<value>`. Every operation has an invocation time and
//! either a completion (a put that answered, a read with the value it saw)
//! or none: it is *indeterminate* (no answer, an error, a timeout). An
//! indeterminate put may take effect at any point after its invocation, or
//! never; an indeterminate read constrains nothing and is dropped.
//!
//! Registers are independent, so a history is linearizable exactly when
//! each key's sub-history is (locality), and every key is checked on its
//! own by a Wing–Gong search as refined by Lowe: depth first over the
//! operations that may come next (those no pending operation precedes in
//! real time), memoized on (operations linearized, current value), with a
//! step budget after which the key is reported [`Verdict::Unknown`] rather
//! than hang. Two reductions keep the search small and are exact: a read
//! that may go next and matches the current value is linearized at once
//! (it changes nothing and only lifts constraints), and an indeterminate
//! put whose value no read saw is dropped (had it taken effect, it was
//! overwritten before any read, so leaving it out is as good).
//!
//! Besides the verdict, anomalies are classified from real-time order
//! alone (each one by itself proves the history not linearizable):
//! * a **stale read**: a read returned a value that a put known to have
//!   taken effect *before the read was invoked* (it completed, or a read of
//!   its value did) had overwritten (that put followed the value's own put,
//!   or a read of the value, in real time; any put overwrote the initial
//!   `None`);
//! * a **lost write**: an acknowledged put, a read invoked after it
//!   completed that returned an older value (the witness), and from then
//!   on no read returned the put's value, nor that of any put invoked
//!   before the witness that is not older than it (one that may have
//!   overwritten it): the key went back, e.g. the final reads after a run
//!   show an older value, or later puts were built on the older state.
//!   (When such a value is read again after the older one, the witness was
//!   only stale.)
//! * a read of a value **never written** to that key;
//! * a read of a value whose put was invoked only **after the read
//!   completed**.
//!
//! A lost write's witness read is also counted as a stale read: the two
//! counts look at the same kind of event from the write's and from the
//! read's side.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;

/// What an operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Writes a value (unique in the whole history).
    Put(u64),
    /// Reads the register.
    Read,
}

/// An operation of the history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Op {
    /// Who issued it (for the explanations).
    pub client: usize,
    /// The register.
    pub key: String,
    /// Put or read.
    pub action: Action,
    /// When it was invoked (any monotonic unit, e.g. ns since the start).
    pub invoke: u64,
    /// When its answer arrived, or `None` when it is indeterminate.
    pub complete: Option<u64>,
    /// What a completed read returned (`None` for puts and indeterminate
    /// reads).
    pub observed: Option<u64>,
}

impl Op {
    /// A put; `complete` is `None` when its outcome is unknown.
    pub fn put(client: usize, key: &str, value: u64, invoke: u64, complete: Option<u64>) -> Self {
        Op {
            client,
            key: key.to_string(),
            action: Action::Put(value),
            invoke,
            complete,
            observed: None,
        }
    }

    /// A completed read that returned `observed`.
    pub fn read(
        client: usize,
        key: &str,
        invoke: u64,
        complete: u64,
        observed: Option<u64>,
    ) -> Self {
        Op {
            client,
            key: key.to_string(),
            action: Action::Read,
            invoke,
            complete: Some(complete),
            observed,
        }
    }

    /// A read that got no answer.
    pub fn read_indeterminate(client: usize, key: &str, invoke: u64) -> Self {
        Op {
            client,
            key: key.to_string(),
            action: Action::Read,
            invoke,
            complete: None,
            observed: None,
        }
    }

    /// Whether it got an answer.
    pub fn acked(&self) -> bool {
        self.complete.is_some()
    }

    /// Whether it completed before `other` was invoked.
    fn precedes(&self, other: &Op) -> bool {
        self.complete.is_some_and(|c| c < other.invoke)
    }
}

fn show_value(value: Option<u64>) -> String {
    match value {
        Some(v) => v.to_string(),
        None => "none".to_string(),
    }
}

fn show_time(t: u64) -> String {
    format!("{:.3}s", t as f64 / 1e9)
}

impl fmt::Display for Op {
    /// `put(k, 7) by c3 [1.200s, 1.450s]`, `read(k) -> none by c1 [..]`,
    /// `put(k, 8) by c2 [1.300s, ?)`: times are shown as seconds when the
    /// unit is nanoseconds.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.action {
            Action::Put(v) => write!(f, "put({}, {v})", self.key)?,
            Action::Read if self.acked() => {
                write!(f, "read({}) -> {}", self.key, show_value(self.observed))?
            }
            Action::Read => write!(f, "read({}) -> ?", self.key)?,
        }
        write!(f, " by c{} [{}, ", self.client, show_time(self.invoke))?;
        match self.complete {
            Some(c) => write!(f, "{}]", show_time(c)),
            None => write!(f, "?)"),
        }
    }
}

/// The outcome of the search for one key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// A linearization exists.
    Linearizable,
    /// None exists.
    NotLinearizable,
    /// The step budget ran out first.
    Unknown,
}

/// An anomaly, with the operations that show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Anomaly {
    /// `read` returned a value `overwriter` (which took effect before the
    /// read was invoked) had overwritten.
    StaleRead {
        /// The read.
        read: Op,
        /// The put that overwrote the value read.
        overwriter: Op,
    },
    /// The acknowledged `put` was gone at `read` (invoked after the put
    /// completed, returning an older value) and its value was never read
    /// again from then on.
    LostWrite {
        /// The put.
        put: Op,
        /// The first read that shows it lost.
        read: Op,
    },
    /// `read` returned a value no put of its key wrote.
    NeverWritten {
        /// The read.
        read: Op,
    },
    /// `read` returned the value of `put`, invoked after the read completed.
    FutureRead {
        /// The read.
        read: Op,
        /// The put.
        put: Op,
    },
    /// Not linearizable, and none of the above explains it.
    Unclassified {
        /// The key.
        key: String,
        /// Where the search got stuck.
        explanation: String,
    },
}

impl fmt::Display for Anomaly {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Anomaly::StaleRead { read, overwriter } => write!(
                f,
                "stale read: {read} returned a value already overwritten by {overwriter}"
            ),
            Anomaly::LostWrite { put, read } => write!(
                f,
                "lost write: acknowledged {put}, then {read} returned an older value, \
                 and no read saw the put's value again"
            ),
            Anomaly::NeverWritten { read } => {
                write!(f, "read of a value never written: {read}")
            }
            Anomaly::FutureRead { read, put } => write!(
                f,
                "read from the future: {read} returned the value of {put}, invoked after it"
            ),
            Anomaly::Unclassified { key, explanation } => {
                write!(f, "not linearizable on {key}: {explanation}")
            }
        }
    }
}

/// The result for one key.
#[derive(Clone, Debug)]
pub struct KeyReport {
    /// The key.
    pub key: String,
    /// The search's outcome.
    pub verdict: Verdict,
    /// Operations of the key (all, including indeterminate ones).
    pub ops: usize,
    /// Search steps taken.
    pub steps: u64,
    /// Classified anomalies.
    pub anomalies: Vec<Anomaly>,
    /// For a failing key: where the search got stuck.
    pub explanation: Option<String>,
}

/// The result for a whole history.
#[derive(Clone, Debug)]
pub struct Report {
    /// One per key, in key order.
    pub keys: Vec<KeyReport>,
    /// Operations in the history.
    pub ops: usize,
    /// Operations that got an answer.
    pub acked: usize,
    /// Operations that did not.
    pub indeterminate: usize,
}

impl Report {
    /// Whether every key is linearizable (an unknown key is not).
    pub fn linearizable(&self) -> bool {
        self.keys.iter().all(|k| k.verdict == Verdict::Linearizable)
    }

    /// Keys whose search ran out of budget.
    pub fn unknown(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| k.verdict == Verdict::Unknown)
            .count()
    }

    /// Every anomaly found.
    pub fn anomalies(&self) -> impl Iterator<Item = &Anomaly> {
        self.keys.iter().flat_map(|k| k.anomalies.iter())
    }

    /// Lost writes.
    pub fn lost(&self) -> usize {
        self.anomalies()
            .filter(|a| matches!(a, Anomaly::LostWrite { .. }))
            .count()
    }

    /// Stale reads.
    pub fn stale(&self) -> usize {
        self.anomalies()
            .filter(|a| matches!(a, Anomaly::StaleRead { .. }))
            .count()
    }

    /// Reads of values never written to their key.
    pub fn never_written(&self) -> usize {
        self.anomalies()
            .filter(|a| matches!(a, Anomaly::NeverWritten { .. }))
            .count()
    }
}

impl fmt::Display for Report {
    /// A summary line, then each failing key with its explanation and
    /// (up to 10 of) its anomalies.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "linearizable={} ops={} acked={} indeterminate={} anomalies={} lost={} stale={} \
             never_written={} unknown_keys={}",
            self.linearizable(),
            self.ops,
            self.acked,
            self.indeterminate,
            self.anomalies().count(),
            self.lost(),
            self.stale(),
            self.never_written(),
            self.unknown()
        )?;
        for key in &self.keys {
            if key.verdict == Verdict::Linearizable {
                continue;
            }
            writeln!(
                f,
                "key {}: {:?} ({} ops, {} steps)",
                key.key, key.verdict, key.ops, key.steps
            )?;
            if let Some(explanation) = &key.explanation {
                writeln!(f, "  {explanation}")?;
            }
            for anomaly in key.anomalies.iter().take(10) {
                writeln!(f, "  {anomaly}")?;
            }
            if key.anomalies.len() > 10 {
                writeln!(f, "  ... and {} more", key.anomalies.len() - 10)?;
            }
        }
        Ok(())
    }
}

/// The default step budget per key.
pub const DEFAULT_BUDGET: u64 = 2_000_000;

/// Checks a history with the default budget per key.
pub fn check(history: &[Op]) -> Report {
    check_with_budget(history, DEFAULT_BUDGET)
}

/// Checks a history, giving the search of each key at most `budget` steps.
pub fn check_with_budget(history: &[Op], budget: u64) -> Report {
    let mut by_key: BTreeMap<&str, Vec<&Op>> = BTreeMap::new();
    for op in history {
        by_key.entry(op.key.as_str()).or_default().push(op);
    }
    let keys = by_key
        .into_iter()
        .map(|(key, ops)| check_key(key, &ops, budget))
        .collect();
    let acked = history.iter().filter(|o| o.acked()).count();
    Report {
        keys,
        ops: history.len(),
        acked,
        indeterminate: history.len() - acked,
    }
}

fn check_key(key: &str, ops: &[&Op], budget: u64) -> KeyReport {
    let anomalies = classify(ops);
    let (verdict, steps, explanation) = search(ops, budget);
    let mut anomalies = anomalies;
    if verdict == Verdict::NotLinearizable && anomalies.is_empty() {
        anomalies.push(Anomaly::Unclassified {
            key: key.to_string(),
            explanation: explanation.clone().unwrap_or_default(),
        });
    }
    let verdict = if anomalies.is_empty() {
        verdict
    } else {
        // Every classified anomaly alone proves a violation (whatever the
        // budget allowed the search to find).
        Verdict::NotLinearizable
    };
    KeyReport {
        key: key.to_string(),
        verdict,
        ops: ops.len(),
        steps,
        anomalies,
        explanation,
    }
}

/// Classifies anomalies of one key from real-time order alone.
fn classify(ops: &[&Op]) -> Vec<Anomaly> {
    let puts: HashMap<u64, &Op> = ops
        .iter()
        .filter_map(|o| match o.action {
            Action::Put(v) => Some((v, *o)),
            Action::Read => None,
        })
        .collect();
    let mut reads: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| o.action == Action::Read && o.acked())
        .collect();
    reads.sort_by_key(|o| o.invoke);
    let completed_puts: Vec<&Op> = ops
        .iter()
        .copied()
        .filter(|o| matches!(o.action, Action::Put(_)) && o.acked())
        .collect();
    // When put `p` had taken effect at the latest: when it completed, or
    // when a read of its value completed.
    let mut first_read: HashMap<u64, u64> = HashMap::new();
    for r in &reads {
        if let (Some(v), Some(c)) = (r.observed, r.complete) {
            let t = first_read.entry(v).or_insert(c);
            *t = (*t).min(c);
        }
    }
    let effective = |p: &Op| -> Option<u64> {
        let Action::Put(v) = p.action else {
            return None;
        };
        first_read
            .get(&v)
            .copied()
            .into_iter()
            .chain(p.complete)
            .min()
    };
    // Whether value `v` is known to be older than put `p`: the initial
    // value, or one whose put had taken effect before `p` was invoked.
    // (Only this direct evidence: inferring an order from reads of `p`'s
    // value too would blame both sides of one anomaly.)
    let older = |v: Option<u64>, p: &Op| -> bool {
        let Some(v) = v else { return true };
        if Action::Put(v) == p.action {
            return false;
        }
        puts.get(&v)
            .and_then(|w| effective(w))
            .is_some_and(|e| e < p.invoke)
    };
    let mut anomalies = Vec::new();
    for read in &reads {
        if let Some(v) = read.observed {
            match puts.get(&v) {
                None => {
                    anomalies.push(Anomaly::NeverWritten {
                        read: (*read).clone(),
                    });
                    continue;
                }
                Some(put) if read.precedes(put) => {
                    anomalies.push(Anomaly::FutureRead {
                        read: (*read).clone(),
                        put: (*put).clone(),
                    });
                    continue;
                }
                Some(_) => {}
            }
        }
        // The latest overwriter known to have taken effect, for the
        // explanation.
        if let Some(overwriter) = puts
            .values()
            .filter(|p| effective(p).is_some_and(|t| t < read.invoke))
            .filter(|p| older(read.observed, p))
            .max_by_key(|p| effective(p))
        {
            anomalies.push(Anomaly::StaleRead {
                read: (*read).clone(),
                overwriter: (*overwriter).clone(),
            });
        }
    }
    for put in &completed_puts {
        let Action::Put(value) = put.action else {
            continue;
        };
        let Some(witness) = reads
            .iter()
            .find(|r| put.precedes(r) && older(r.observed, put))
        else {
            continue;
        };
        // Seen again: a read that did not end before the witness began
        // returned the put's value, or that of a put invoked before the
        // witness and not older than this one (which may have overwritten
        // it: then the witness was only stale). Puts invoked after the
        // witness began do not count: they may build on the older state.
        let newer: HashSet<u64> = puts
            .values()
            .filter(|q| q.invoke < witness.invoke)
            .filter_map(|q| match q.action {
                Action::Put(qv) if !older(Some(qv), put) => Some(qv),
                _ => None,
            })
            .collect();
        let recovered = reads.iter().any(|r| {
            !r.precedes(witness) && r.observed.is_some_and(|v| v == value || newer.contains(&v))
        });
        if !recovered {
            anomalies.push(Anomaly::LostWrite {
                put: (*put).clone(),
                read: (*witness).clone(),
            });
        }
    }
    anomalies
}

/// A set of operation indices.
#[derive(Clone)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: usize) -> Self {
        Bits(vec![0; n.div_ceil(64)])
    }
    fn get(&self, i: usize) -> bool {
        self.0[i / 64] >> (i % 64) & 1 == 1
    }
    fn set(&mut self, i: usize) {
        self.0[i / 64] |= 1 << (i % 64);
    }
    fn clear(&mut self, i: usize) {
        self.0[i / 64] &= !(1 << (i % 64));
    }
    /// The memo key: the first index not in the set (everything below is
    /// in it) and the words from there on, trailing zeros trimmed.
    fn memo_key(&self, low: usize) -> (usize, Vec<u64>) {
        let mut words = self.0[low / 64..].to_vec();
        while words.last() == Some(&0) {
            words.pop();
        }
        (low, words)
    }
}

/// One step down the search.
struct Frame {
    op: usize,
    previous: Option<u64>,
    /// A read taken without branching: backtracking goes through it.
    forced: bool,
}

/// The Wing–Gong/Lowe search over one key. Returns the verdict, the steps
/// taken, and for a failure where it got stuck.
fn search(all: &[&Op], budget: u64) -> (Verdict, u64, Option<String>) {
    let observed: HashSet<u64> = all
        .iter()
        .filter(|o| o.action == Action::Read && o.acked())
        .filter_map(|o| o.observed)
        .collect();
    let mut ops: Vec<&Op> = all
        .iter()
        .copied()
        .filter(|o| match o.action {
            // An indeterminate read constrains nothing.
            Action::Read => o.acked(),
            // An indeterminate put nobody saw may as well never have
            // taken effect.
            Action::Put(v) => o.acked() || observed.contains(&v),
        })
        .collect();
    ops.sort_by_key(|o| o.invoke);
    let n = ops.len();
    // An indeterminate put left here was read: it took effect before the
    // first read of its value completed, which bounds it like a
    // completion (exactly: it must precede that read).
    let mut first_read: HashMap<u64, u64> = HashMap::new();
    for o in &ops {
        if let (Action::Read, Some(v), Some(c)) = (o.action, o.observed, o.complete) {
            let t = first_read.entry(v).or_insert(c);
            *t = (*t).min(c);
        }
    }
    let complete: Vec<u64> = ops
        .iter()
        .map(|o| match (o.complete, o.action) {
            (Some(c), _) => c,
            (None, Action::Put(v)) => first_read.get(&v).copied().unwrap_or(u64::MAX),
            (None, Action::Read) => u64::MAX,
        })
        .collect();
    let mut required = ops.iter().filter(|o| o.acked()).count();
    let mut done = Bits::new(n);
    let mut low = 0; // the first index not done
    let mut value: Option<u64> = None;
    let mut stack: Vec<Frame> = Vec::new();
    let mut memo: HashSet<(usize, Vec<u64>, Option<u64>)> = HashSet::new();
    let mut fresh = true;
    let mut resume = 0;
    let mut steps = 0u64;
    // The deepest point reached, for the explanation.
    let mut deepest: Option<(usize, Option<u64>, Vec<usize>)> = None;

    loop {
        if required == 0 {
            return (Verdict::Linearizable, steps, None);
        }
        steps += 1;
        if steps > budget {
            return (Verdict::Unknown, steps, None);
        }
        while low < n && done.get(low) {
            low += 1;
        }
        // The earliest completion among the operations not linearized: an
        // operation may go next only if it was invoked by then.
        let mut frontier = u64::MAX;
        for i in low..n {
            if ops[i].invoke > frontier {
                break;
            }
            if !done.get(i) {
                frontier = frontier.min(complete[i]);
            }
        }
        let candidates = (low..n)
            .take_while(|&i| ops[i].invoke <= frontier)
            .filter(|&i| !done.get(i));
        if fresh {
            let matching = candidates
                .clone()
                .find(|&i| ops[i].action == Action::Read && ops[i].observed == value);
            if let Some(i) = matching {
                done.set(i);
                required -= 1;
                stack.push(Frame {
                    op: i,
                    previous: value,
                    forced: true,
                });
                continue;
            }
            if !memo.insert({
                let (l, w) = done.memo_key(low);
                (l, w, value)
            }) {
                resume = n; // seen: nothing to try here
            } else {
                let depth = stack.len();
                if deepest.as_ref().is_none_or(|d| depth > d.0) {
                    deepest = Some((depth, value, candidates.clone().collect()));
                }
            }
        }
        let next = candidates
            .filter(|&i| i >= resume)
            .find(|&i| matches!(ops[i].action, Action::Put(_)));
        if let Some(i) = next {
            let Action::Put(v) = ops[i].action else {
                unreachable!()
            };
            done.set(i);
            if ops[i].acked() {
                required -= 1;
            }
            stack.push(Frame {
                op: i,
                previous: value,
                forced: false,
            });
            value = Some(v);
            fresh = true;
            resume = 0;
            continue;
        }
        // Nothing fits: backtrack past the forced reads to the last choice.
        loop {
            let Some(frame) = stack.pop() else {
                let explanation = deepest.map(|(depth, value, candidates)| {
                    let next: Vec<String> =
                        candidates.iter().map(|&i| ops[i].to_string()).collect();
                    format!(
                        "at most {depth} of {n} operations linearize; then, with value {}, \
                         none of the operations that may come next fits: {}",
                        show_value(value),
                        next.join("; ")
                    )
                });
                return (Verdict::NotLinearizable, steps, explanation);
            };
            done.clear(frame.op);
            low = low.min(frame.op);
            if ops[frame.op].acked() {
                required += 1;
            }
            value = frame.previous;
            if !frame.forced {
                resume = frame.op + 1;
                fresh = false;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn put(c: usize, v: u64, i: u64, r: u64) -> Op {
        Op::put(c, "k", v, i, Some(r))
    }
    fn put_unknown(c: usize, v: u64, i: u64) -> Op {
        Op::put(c, "k", v, i, None)
    }
    fn read(c: usize, v: Option<u64>, i: u64, r: u64) -> Op {
        Op::read(c, "k", i, r, v)
    }

    #[test]
    fn accepts_sequential_and_concurrent_histories() {
        let report = check(&[
            read(0, None, 0, 1),
            put(0, 1, 2, 3),
            read(1, Some(1), 4, 5),
            put(1, 2, 6, 10),
            // Concurrent with put 2: either value.
            read(2, Some(1), 7, 8),
            read(3, Some(2), 7, 9),
            read(0, Some(2), 11, 12),
        ]);
        assert!(report.linearizable(), "{report}");
        assert_eq!(report.anomalies().count(), 0);
        assert_eq!((report.ops, report.acked, report.indeterminate), (7, 7, 0));
    }

    #[test]
    fn concurrent_puts_may_land_in_either_order() {
        // Two overlapping puts; reads after both see either, but all the
        // same one (the later-linearized one).
        let ok = check(&[
            put(0, 1, 0, 10),
            put(1, 2, 1, 9),
            read(2, Some(1), 11, 12),
            read(3, Some(1), 13, 14),
        ]);
        assert!(ok.linearizable(), "{ok}");
        let flip = check(&[
            put(0, 1, 0, 10),
            put(1, 2, 1, 9),
            read(2, Some(1), 11, 12),
            read(3, Some(2), 13, 14),
        ]);
        // (Put 1 must be the later one, as c2 read it after both; that
        // takes the search to see: the violation is not classified.)
        assert!(!flip.linearizable(), "{flip}");
        assert!(
            matches!(flip.keys[0].anomalies[..], [Anomaly::Unclassified { .. }]),
            "{flip}"
        );
    }

    #[test]
    fn indeterminate_puts_that_did_or_did_not_take_effect() {
        // Took effect (seen later), even long after its invocation.
        let took = check(&[
            put_unknown(0, 1, 0),
            put(1, 2, 1, 2),
            read(2, Some(2), 3, 4),
            read(2, Some(1), 5, 6),
            read(3, Some(1), 7, 8),
        ]);
        assert!(took.linearizable(), "{took}");
        // Never took effect.
        let never = check(&[
            put(1, 2, 1, 2),
            put_unknown(0, 1, 3),
            read(2, Some(2), 4, 5),
            read(3, Some(2), 6, 7),
        ]);
        assert!(never.linearizable(), "{never}");
        assert_eq!(never.indeterminate, 1);
        // Indeterminate reads constrain nothing.
        let mut h = vec![put(0, 1, 0, 1), Op::read_indeterminate(1, "k", 2)];
        h.push(read(2, Some(1), 3, 4));
        assert!(check(&h).linearizable());
        // But an indeterminate put cannot take effect before it is invoked.
        let early = check(&[read(0, Some(1), 0, 1), put_unknown(1, 1, 2)]);
        assert!(!early.linearizable());
        assert!(matches!(
            early.keys[0].anomalies[0],
            Anomaly::FutureRead { .. }
        ));
        // Nor after a value that came later and was then read.
        let flipflop = check(&[
            put_unknown(0, 1, 0),
            put(1, 2, 1, 2),
            read(2, Some(1), 3, 4),
            read(2, Some(2), 5, 6),
        ]);
        assert!(!flipflop.linearizable(), "{flipflop}");
    }

    #[test]
    fn finds_a_planted_stale_read() {
        let report = check(&[
            put(0, 1, 0, 1),
            put(0, 2, 2, 3),
            read(1, Some(2), 4, 5),
            read(2, Some(1), 6, 7), // 2 overwrote 1 before this began
            read(1, Some(2), 8, 9),
        ]);
        assert!(!report.linearizable());
        assert_eq!(report.stale(), 1, "{report}");
        assert_eq!(report.lost(), 0, "{report}");
        let text = report.to_string();
        assert!(text.contains("stale read: read(k) -> 1 by c2"), "{text}");
        assert!(text.contains("overwritten by put(k, 2)"), "{text}");
        // A stale `none` after a completed put.
        let none = check(&[put(0, 1, 0, 1), read(1, None, 2, 3), read(1, Some(1), 4, 5)]);
        assert_eq!((none.stale(), none.lost()), (1, 0), "{none}");
    }

    #[test]
    fn finds_a_planted_lost_write() {
        // The acked put 2 is gone: the final reads show 1 again.
        let report = check(&[
            put(0, 1, 0, 1),
            put(1, 2, 2, 3),
            read(2, Some(2), 4, 5),
            put(3, 3, 6, 20), // indeterminate? no: acked but slow, concurrent
            read(0, Some(1), 21, 22),
            read(1, Some(1), 23, 24),
        ]);
        assert!(!report.linearizable());
        // Puts 2 and 3 are both lost.
        assert_eq!(report.lost(), 2, "{report}");
        assert!(report.stale() >= 2, "{report}");
        let text = report.to_string();
        assert!(
            text.contains("lost write: acknowledged put(k, 2)"),
            "{text}"
        );
        // Lost but never read before: an acked put, then only older values.
        let silent = check(&[put(0, 1, 0, 1), read(1, None, 2, 3)]);
        assert_eq!((silent.lost(), silent.stale()), (1, 1), "{silent}");
        // Lost, and later writes built on the older state: put 2 is never
        // seen again after the read of 1.
        let rolled_back = check(&[
            put(0, 1, 0, 1),
            put(1, 2, 2, 3),
            read(2, Some(2), 4, 5),
            read(2, Some(1), 6, 7),
            put(3, 3, 8, 9),
            read(0, Some(3), 10, 11),
        ]);
        assert_eq!(
            (rolled_back.lost(), rolled_back.stale()),
            (1, 1),
            "{rolled_back}"
        );
        // Only stale: the value comes back after the older read.
        let back = check(&[
            put(0, 1, 0, 1),
            put(1, 2, 2, 3),
            read(2, Some(1), 4, 5),
            read(3, Some(2), 6, 7),
            put(3, 3, 8, 9),
        ]);
        assert_eq!((back.lost(), back.stale()), (0, 1), "{back}");
        // Only stale: put 2 was overwritten by the concurrent put 3, which
        // is read after the older read.
        let overwritten = check(&[
            put(0, 1, 0, 1),
            put(1, 2, 2, 5),
            put(2, 3, 3, 6),
            read(3, Some(1), 7, 8),
            read(3, Some(3), 9, 10),
        ]);
        assert_eq!(
            (overwritten.lost(), overwritten.stale()),
            (0, 1),
            "{overwritten}"
        );
        // But a put invoked after the older read began does not bring
        // the lost one back.
        let rebuilt = check(&[
            put(0, 1, 0, 1),
            put(1, 2, 2, 5),
            read(3, Some(1), 7, 8),
            put(2, 3, 7, 9),
            read(3, Some(3), 10, 11),
        ]);
        assert_eq!((rebuilt.lost(), rebuilt.stale()), (1, 1), "{rebuilt}");
    }

    #[test]
    fn finds_a_read_of_a_value_never_written() {
        let report = check(&[put(0, 1, 0, 1), read(1, Some(99), 2, 3)]);
        assert!(!report.linearizable());
        assert_eq!(report.never_written(), 1);
        assert!(report.to_string().contains("never written"));
        // Written to another key does not count.
        let other = check(&[
            Op::put(0, "a", 5, 0, Some(1)),
            Op::read(1, "b", 2, 3, Some(5)),
        ]);
        assert_eq!(other.never_written(), 1, "{other}");
        assert!(other.keys[0].verdict == Verdict::Linearizable);
    }

    #[test]
    fn keys_are_independent_and_counts_add_up() {
        let report = check(&[
            Op::put(0, "a", 1, 0, Some(1)),
            Op::put(0, "b", 2, 2, Some(3)),
            Op::read(1, "a", 4, 5, Some(1)),
            Op::read(1, "b", 4, 5, None), // stale and lost on b
            Op::put(2, "c", 3, 0, None),
            Op::read_indeterminate(2, "c", 6),
        ]);
        assert_eq!((report.ops, report.acked, report.indeterminate), (6, 4, 2));
        assert_eq!(report.keys.len(), 3);
        assert_eq!(report.keys[0].verdict, Verdict::Linearizable);
        assert_eq!(report.keys[1].verdict, Verdict::NotLinearizable);
        assert_eq!(report.keys[2].verdict, Verdict::Linearizable);
        assert_eq!((report.stale(), report.lost()), (1, 1));
        assert_eq!(report.anomalies().count(), 2);
        let summary = report.to_string();
        assert!(
            summary.starts_with(
                "linearizable=false ops=6 acked=4 indeterminate=2 anomalies=2 lost=1 stale=1"
            ),
            "{summary}"
        );
    }

    #[test]
    fn a_failing_key_is_explained() {
        // Two overlapping puts; c2 sees 1 then 2, c3 sees 2 then 1: each
        // read alone fits, together no order of the puts does.
        let report = check(&[
            put(0, 1, 0, 100),
            put(1, 2, 0, 100),
            read(2, Some(1), 10, 20),
            read(2, Some(2), 30, 40),
            read(3, Some(2), 10, 20),
            read(3, Some(1), 30, 40),
        ]);
        assert!(!report.linearizable(), "{report}");
        let text = report.to_string();
        assert!(
            text.contains("none of the operations that may come next fits"),
            "{text}"
        );
        assert!(text.contains("not linearizable on k"), "{text}");
        assert_eq!(report.anomalies().count(), 1, "{text}");
        assert_eq!(report.stale() + report.lost(), 0, "{text}");
    }

    #[test]
    fn the_budget_reports_unknown() {
        // Many overlapping puts, then reads no order of them fits: the
        // search must try every order (memoized), far beyond 10 steps.
        let mut h = Vec::new();
        for v in 0..12 {
            h.push(put(v as usize, v + 1, 0, 1000));
        }
        h.push(read(99, Some(1), 1001, 1002));
        h.push(read(99, Some(2), 1003, 1004));
        let refs: Vec<&Op> = h.iter().collect();
        assert_eq!(search(&refs, 10).0, Verdict::Unknown);
        assert_eq!(search(&refs, DEFAULT_BUDGET).0, Verdict::NotLinearizable);
        // A key the search gave up on is not reported linearizable.
        let mut ok = Vec::new();
        for v in 0..12 {
            ok.push(put(v as usize, v + 1, 0, 1000));
        }
        ok.push(read(99, Some(1), 1001, 1002));
        let report = check_with_budget(&ok, 3);
        assert_eq!(report.keys[0].verdict, Verdict::Unknown, "{report}");
        assert!(!report.linearizable());
        assert_eq!(report.unknown(), 1);
        assert!(check(&ok).linearizable());
    }

    use crate::rng::SplitMix64 as SplitMix;

    /// Random histories of a real linearizable register: each op takes
    /// effect at a random point inside its interval; some puts lose their
    /// answer (and some of those never take effect), some reads too.
    fn random_history(seed: u64, clients: usize, per_client: usize) -> Vec<Op> {
        let mut rng = SplitMix(seed);
        struct Pending {
            op: Op,
            effect: u64,
            takes_effect: bool,
        }
        let mut pending = Vec::new();
        let mut value = 0;
        for c in 0..clients {
            let mut t = rng.below(50);
            for _ in 0..per_client {
                let invoke = t + 1;
                let effect = invoke + 1 + rng.below(40);
                let complete = effect + 1 + rng.below(40);
                t = complete + rng.below(20);
                let key = ["x", "y"][rng.below(2) as usize];
                let lost_answer = rng.below(8) == 0;
                let op = if rng.below(2) == 0 {
                    value += 1;
                    Op::put(c, key, value, invoke, (!lost_answer).then_some(complete))
                } else {
                    Op {
                        client: c,
                        key: key.to_string(),
                        action: Action::Read,
                        invoke,
                        complete: (!lost_answer).then_some(complete),
                        observed: None,
                    }
                };
                let takes_effect = !lost_answer || rng.below(2) == 0;
                pending.push(Pending {
                    op,
                    effect,
                    takes_effect,
                });
            }
        }
        // Apply the effects in time order to fill in the reads.
        pending.sort_by_key(|p| p.effect);
        let mut registers: HashMap<String, u64> = HashMap::new();
        for p in &mut pending {
            match p.op.action {
                Action::Put(v) if p.takes_effect => {
                    registers.insert(p.op.key.clone(), v);
                }
                Action::Put(_) => {}
                Action::Read if p.op.acked() => {
                    p.op.observed = registers.get(&p.op.key).copied();
                }
                Action::Read => {}
            }
        }
        pending.into_iter().map(|p| p.op).collect()
    }

    #[test]
    fn random_linearizable_histories_pass() {
        for seed in 0..200 {
            let h = random_history(seed, 6, 25);
            let report = check(&h);
            assert!(report.linearizable(), "seed {seed}: {report}");
            assert_eq!(report.anomalies().count(), 0, "seed {seed}");
        }
    }

    /// Whether some order of `ops` (each indeterminate put included or
    /// not) respects real time and the register: every permutation.
    fn brute_force(ops: &[Op]) -> bool {
        fn go(ops: &[Op], used: &mut Vec<bool>, value: Option<u64>) -> bool {
            let pending: Vec<usize> = (0..ops.len()).filter(|&i| !used[i]).collect();
            if pending.iter().all(|&i| !ops[i].acked()) {
                return true;
            }
            for &i in &pending {
                // Nothing pending may have completed before this began.
                if pending.iter().any(|&j| j != i && ops[j].precedes(&ops[i])) {
                    continue;
                }
                let next = match ops[i].action {
                    Action::Put(v) => Some(v),
                    Action::Read if !ops[i].acked() => value,
                    Action::Read if ops[i].observed == value => value,
                    Action::Read => continue,
                };
                used[i] = true;
                let ok = go(ops, used, next);
                used[i] = false;
                if ok {
                    return true;
                }
            }
            false
        }
        go(ops, &mut vec![false; ops.len()], None)
    }

    #[test]
    fn the_search_agrees_with_brute_force_on_small_histories() {
        let mut rng = SplitMix(0x5eed);
        let (mut yes, mut no) = (0, 0);
        for case in 0..3000 {
            let n = 2 + rng.below(6) as usize;
            let mut h = Vec::new();
            for i in 0..n {
                let invoke = rng.below(20);
                let complete = (rng.below(5) != 0).then(|| invoke + 1 + rng.below(10));
                if rng.below(2) == 0 {
                    h.push(Op::put(i, "k", i as u64 + 1, invoke, complete));
                } else {
                    // A value some put writes, or none, or one nobody does.
                    let observed = match rng.below(n as u64 + 2) {
                        0 => None,
                        v => Some(v),
                    };
                    let mut op = Op::read(i, "k", invoke, complete.unwrap_or(0), observed);
                    if complete.is_none() {
                        op = Op::read_indeterminate(i, "k", invoke);
                    }
                    h.push(op);
                }
            }
            let expected = brute_force(&h);
            let report = check(&h);
            assert_eq!(
                report.linearizable(),
                expected,
                "case {case}: {h:#?}\n{report}"
            );
            // Classified anomalies only ever appear in failing histories.
            if expected {
                assert_eq!(report.anomalies().count(), 0, "case {case}");
                yes += 1;
            } else {
                no += 1;
            }
        }
        assert!(yes > 300 && no > 300, "{yes} linearizable, {no} not");
    }

    #[test]
    fn a_long_history_checks_quickly() {
        // About the size of a long fleet run: 8 clients, 1,600 operations.
        let h = random_history(7, 8, 200);
        let started = std::time::Instant::now();
        let report = check(&h);
        assert!(report.linearizable(), "{report}");
        let steps: u64 = report.keys.iter().map(|k| k.steps).sum();
        assert!(steps < 100_000, "{steps} steps");
        eprintln!("{} ops, {steps} steps, {:?}", report.ops, started.elapsed());
    }

    #[test]
    fn random_histories_with_a_planted_stale_read_fail() {
        let mut found = 0;
        for seed in 0..200 {
            let mut h = random_history(seed, 6, 25);
            // Rewrite a late read to return the value of a put that was
            // overwritten, in real time, by a put completed before it.
            let mut plant = None;
            for (ri, r) in h.iter().enumerate() {
                if r.action != Action::Read || !r.acked() {
                    continue;
                }
                for a in &h {
                    let Action::Put(va) = a.action else { continue };
                    if a.key != r.key || !a.acked() {
                        continue;
                    }
                    if h.iter().any(|b| {
                        b.key == r.key
                            && matches!(b.action, Action::Put(_))
                            && a.precedes(b)
                            && b.precedes(r)
                    }) {
                        plant = Some((ri, va));
                    }
                }
            }
            let Some((ri, va)) = plant else { continue };
            h[ri].observed = Some(va);
            let report = check(&h);
            assert!(!report.linearizable(), "seed {seed}");
            assert!(report.stale() >= 1, "seed {seed}: {report}");
            found += 1;
        }
        assert!(found > 100, "{found}");
    }
}
