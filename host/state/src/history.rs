//! The ingress history: the fate of every request a round inducted, as
//! replicated state (like the IC's ingress history).
//!
//! Each request that carries an id (a signed request's id, or an unsigned
//! one's from what it sent: [`cellar_types::api::request_id`]) is recorded
//! when a round inducts it (processing), then replied or rejected with its
//! result when it finishes, in that round or a later one (a deferred
//! reply). Every replica executes the same rounds, so every replica holds
//! the same history and answers a poll alike, and a restart rebuilds it
//! from the checkpoint and the journal's records.
//!
//! An entry is keyed by request id (32 bytes; a `BTreeMap`) and holds the
//! caller, the expiry, the fate (`processing`, `replied`, `rejected`,
//! `done`), the reply or reject (a `CallResponse`, in the reply encoding
//! the request asked for), the round and round time of the last change,
//! and while processing its `IngressId` (so a deferred reply finished in a
//! later round, also after a restart, finds it).
//!
//! A round first prunes by its own time, never the wall clock, so every
//! replica prunes at the same round: at the first round whose time is past
//! a request's ingress expiry its result is dropped (`done`), and the entry
//! goes once the expiry plus [`HistoryLimits::margin_nanos`] (60 s) has
//! passed; a request still processing at its expiry stays until it
//! finishes. Then each tagged ingress is inducted (`processing`), or
//! refused alike everywhere: the id is in the history (executed before: a
//! replay) or the history is full ([`HistoryLimits`]: 1,000,000 entries,
//! 256 MiB of results as JSON; "the ingress history is full; retry later",
//! 503). Live entries are never dropped to make room. At the end of the
//! round every answered request's result is recorded (`round::record_fates`
//! in `cellar_execution`: calls, management requests with a small reply,
//! requests rejected before execution: unknown method, bad arguments,
//! frozen, not a controller).
//!
//! Its hash is maintained incrementally: the sum (mod 2^256) of the
//! entries' SHA-256 digests, updated per change, so a round pays for the
//! entries it changed only. It is folded into the state hash when
//! non-empty (the empty state's hash is unchanged). Checkpoints keep the
//! entries in their metadata (so state sync ships them) and replay of the
//! journal rebuilds the rest: the history is derived from executing the
//! journal's records, with no write of its own.
//!
//! Cost (`history_cost`, ignored test; measured in cellar-node, before
//! this crate was split off from it, at opt-level 2, 200,000 live
//! entries, shared 2-core machine at load 4): 6–8 µs per request to
//! record (induct and finish; each entry's digest is computed once per
//! change, the reply's JSON once), 7–10 µs per entry to prune (result
//! dropped, then entry removed), the hash 0.5 µs; a checkpoint round copies
//! the entry handles in 16–33 ms and its writer serializes them (307 bytes
//! per entry with a small reply) in 1.6–1.9 s, off the round's path.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use cellar_types::Principal;
use cellar_types::api::{CallResponse, ReplyEncoding, RequestState, RequestStatus};
use data_encoding::HEXLOWER;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::messages::IngressId;

/// Why a round refuses to induct a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryRefusal {
    /// The history holds as many entries, or reply bytes, as it may.
    #[error("the ingress history is full; retry later")]
    Full,
    /// The id is in the history: the request was inducted before.
    #[error("request {0} was already executed; a replay is not executed again")]
    Duplicate(String),
}

/// The bounds of the history; every replica of a subnet must use the same.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Entries at most.
    pub entries: usize,
    /// Bytes of results (replies and rejects, as JSON) at most. A result
    /// of a request inducted before the bound was reached is always
    /// recorded, so this may be exceeded by the requests in flight.
    pub reply_bytes: u64,
    /// How long past its ingress expiry a request stays (as `done`).
    pub margin_nanos: u64,
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits {
            entries: 1_000_000,
            reply_bytes: 256 << 20,
            margin_nanos: 60 * 1_000_000_000,
        }
    }
}

/// Where a request is, as the history records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fate {
    /// Inducted, not finished.
    Processing,
    /// Finished: the canister replied.
    Replied,
    /// Finished: rejected (by the canister or the system).
    Rejected,
    /// Finished, its result dropped at its expiry.
    Done,
}

impl Fate {
    fn state(self) -> RequestState {
        match self {
            Fate::Processing => RequestState::Processing,
            Fate::Replied => RequestState::Replied,
            Fate::Rejected => RequestState::Rejected,
            Fate::Done => RequestState::Done,
        }
    }
}

/// One request's entry.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HistoryEntry {
    /// The request id (64 hex digits).
    pub id: String,
    /// The sender: the only one who may read the entry.
    pub caller: Principal,
    /// The request's ingress expiry (ns since the epoch).
    pub expiry: u64,
    /// Where it is.
    pub fate: Fate,
    /// The reply or reject, while replied or rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<CallResponse>,
    /// The round of the last change.
    pub round: u64,
    /// That round's time.
    pub time_nanos: u64,
    /// Where it was inducted, while processing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressId>,
    /// How its reply is encoded.
    #[serde(default)]
    pub encoding: ReplyEncoding,
    /// The digest and result bytes, computed once when the entry is put
    /// into the history.
    #[serde(skip)]
    sealed: ([u8; 32], u64),
}

impl HistoryEntry {
    /// The entry's digest and the bytes of its result.
    fn digest(&self) -> ([u8; 32], u64) {
        let mut h = Sha256::new();
        h.update(b"cellar-ingress-history-entry\0");
        h.update(self.id.as_bytes());
        h.update((self.caller.as_bytes().len() as u64).to_le_bytes());
        h.update(self.caller.as_bytes());
        h.update(self.expiry.to_le_bytes());
        h.update([self.fate as u8]);
        let reply_len = match &self.response {
            None => {
                h.update([0]);
                0
            }
            Some(response) => {
                let json = serde_json::to_vec(response).expect("responses serialize");
                h.update([1]);
                h.update((json.len() as u64).to_le_bytes());
                h.update(&json);
                json.len() as u64
            }
        };
        h.update(self.round.to_le_bytes());
        h.update(self.time_nanos.to_le_bytes());
        match self.ingress {
            None => h.update([0]),
            Some(at) => {
                h.update([1]);
                h.update(at.round.to_le_bytes());
                h.update(at.index.to_le_bytes());
            }
        }
        h.update([matches!(self.encoding, ReplyEncoding::Json) as u8]);
        (h.finalize().into(), reply_len)
    }
}

/// A request id as the history keys it: 32 bytes (none for text that is
/// not 64 lowercase hex digits).
pub fn parse_id(id: &str) -> Option<[u8; 32]> {
    HEXLOWER.decode(id.as_bytes()).ok()?.try_into().ok()
}

/// The ingress history (see the module's documentation).
#[derive(Clone)]
pub struct IngressHistory {
    limits: HistoryLimits,
    entries: BTreeMap<[u8; 32], Arc<HistoryEntry>>,
    /// Replied, rejected and processing entries by (expiry, id): the first
    /// round past the expiry drops the result.
    expiring: BTreeSet<(u64, [u8; 32])>,
    /// Done entries by (expiry + margin, id): removed from then on.
    removing: BTreeSet<(u64, [u8; 32])>,
    /// Processing entries by their place in their round.
    processing: BTreeMap<IngressId, [u8; 32]>,
    reply_bytes: u64,
    /// The sum of the entries' digests, mod 2^256 (little-endian limbs).
    sum: [u64; 4],
}

fn add(sum: &mut [u64; 4], digest: &[u8; 32], negate: bool) {
    let mut limbs = [0u64; 4];
    for (i, limb) in limbs.iter_mut().enumerate() {
        *limb = u64::from_le_bytes(digest[i * 8..i * 8 + 8].try_into().expect("8 bytes"));
    }
    if negate {
        // Two's complement: !x + 1.
        let mut carry = 1u64;
        for limb in &mut limbs {
            let (v, c) = (!*limb).overflowing_add(carry);
            *limb = v;
            carry = c as u64;
        }
    }
    let mut carry = 0u64;
    for (s, l) in sum.iter_mut().zip(limbs) {
        let (v1, c1) = s.overflowing_add(l);
        let (v2, c2) = v1.overflowing_add(carry);
        *s = v2;
        carry = (c1 as u64) + (c2 as u64);
    }
}

impl IngressHistory {
    /// An empty history bounded by `limits`.
    pub fn new(limits: HistoryLimits) -> Self {
        IngressHistory {
            limits,
            entries: BTreeMap::new(),
            expiring: BTreeSet::new(),
            removing: BTreeSet::new(),
            processing: BTreeMap::new(),
            reply_bytes: 0,
            sum: [0; 4],
        }
    }

    /// The history of `entries` (as a checkpoint holds them); entries with
    /// a malformed id are dropped.
    pub fn from_entries(limits: HistoryLimits, entries: Vec<HistoryEntry>) -> Self {
        let mut history = IngressHistory::new(limits);
        for entry in entries {
            if let Some(key) = parse_id(&entry.id) {
                history.put(key, entry);
            }
        }
        history
    }

    /// Inserts or replaces the entry at `key`, keeping the indexes, the
    /// byte count and the sum.
    fn put(&mut self, key: [u8; 32], mut entry: HistoryEntry) {
        self.take(&key);
        entry.sealed = entry.digest();
        let (digest, bytes) = entry.sealed;
        add(&mut self.sum, &digest, false);
        self.reply_bytes += bytes;
        match entry.fate {
            Fate::Done => {
                self.removing
                    .insert((entry.expiry.saturating_add(self.limits.margin_nanos), key));
            }
            _ => {
                self.expiring.insert((entry.expiry, key));
            }
        }
        if let (Fate::Processing, Some(at)) = (entry.fate, entry.ingress) {
            self.processing.insert(at, key);
        }
        self.entries.insert(key, Arc::new(entry));
    }

    /// Removes the entry at `key` with its index entries.
    fn take(&mut self, key: &[u8; 32]) -> Option<HistoryEntry> {
        let entry = self.entries.remove(key)?;
        let (digest, bytes) = entry.sealed;
        add(&mut self.sum, &digest, true);
        self.reply_bytes -= bytes;
        self.expiring.remove(&(entry.expiry, *key));
        self.removing
            .remove(&(entry.expiry.saturating_add(self.limits.margin_nanos), *key));
        if let Some(at) = entry.ingress {
            self.processing.remove(&at);
        }
        Some(Arc::unwrap_or_clone(entry))
    }

    /// At the start of a round at `time`: drops the results of requests
    /// whose expiry has passed, and removes done requests past their
    /// expiry plus the margin.
    pub fn prune(&mut self, time: u64, round: u64) {
        while let Some(&(expiry, key)) = self.expiring.first() {
            if expiry > time {
                break;
            }
            self.expiring.pop_first();
            let Some(entry) = self.entries.get(&key) else {
                continue;
            };
            if entry.fate == Fate::Processing {
                // Still running: it stays until it finishes.
                continue;
            }
            let mut entry = self.take(&key).expect("present");
            entry.fate = Fate::Done;
            entry.response = None;
            entry.round = round;
            entry.time_nanos = time;
            self.put(key, entry);
        }
        while let Some(&(until, key)) = self.removing.first() {
            if until > time {
                break;
            }
            self.removing.pop_first();
            self.take(&key);
        }
    }

    /// Whether a round at `time` would drop a result or an entry.
    pub fn prune_due(&self, time: u64) -> bool {
        self.expiring.first().is_some_and(|(t, _)| *t <= time)
            || self.removing.first().is_some_and(|(t, _)| *t <= time)
    }

    /// Whether new requests are refused now.
    pub fn is_full(&self) -> bool {
        self.entries.len() >= self.limits.entries || self.reply_bytes >= self.limits.reply_bytes
    }

    /// Records request `id` (from `caller`, expiring at `expiry`) as
    /// inducted at `at` in the round `(round, time)`. A malformed id is
    /// not recorded (and not refused).
    #[allow(clippy::too_many_arguments)]
    pub fn induct(
        &mut self,
        id: &str,
        caller: &Principal,
        expiry: u64,
        encoding: ReplyEncoding,
        at: IngressId,
        round: u64,
        time: u64,
    ) -> Result<(), HistoryRefusal> {
        let Some(key) = parse_id(id) else {
            return Ok(());
        };
        if self.entries.contains_key(&key) {
            return Err(HistoryRefusal::Duplicate(id.to_string()));
        }
        if self.is_full() {
            return Err(HistoryRefusal::Full);
        }
        self.put(
            key,
            HistoryEntry {
                id: id.to_string(),
                caller: caller.clone(),
                expiry,
                fate: Fate::Processing,
                response: None,
                round,
                time_nanos: time,
                ingress: Some(at),
                encoding,
                sealed: ([0; 32], 0),
            },
        );
        Ok(())
    }

    /// The reply encoding of the request processing at `at`; none when no
    /// recorded request is processing there.
    pub fn processing_at(&self, at: IngressId) -> Option<ReplyEncoding> {
        let key = self.processing.get(&at)?;
        self.entries.get(key).map(|e| e.encoding)
    }

    /// The request processing at `at` finished with `response` in the
    /// round `(round, time)`: replied or rejected, or done at once when its
    /// expiry has passed.
    pub fn finish(&mut self, at: IngressId, response: CallResponse, round: u64, time: u64) {
        let Some(key) = self.processing.get(&at).copied() else {
            return;
        };
        let mut entry = self.take(&key).expect("processing entries exist");
        entry.ingress = None;
        entry.round = round;
        entry.time_nanos = time;
        if entry.expiry <= time {
            entry.fate = Fate::Done;
            entry.response = None;
        } else {
            entry.fate = match response {
                CallResponse::Replied { .. } => Fate::Replied,
                CallResponse::Rejected { .. } => Fate::Rejected,
            };
            entry.response = Some(response);
        }
        self.put(key, entry);
    }

    /// Request `id`'s status as `caller` may see it: only its sender (the
    /// anonymous principal for unsigned requests) reads it. None when the
    /// history does not hold it for `caller`.
    pub fn status(&self, id: &str, caller: &Principal) -> Option<RequestStatus> {
        let entry = self.entries.get(&parse_id(id)?)?;
        (&entry.caller == caller).then(|| RequestStatus {
            request_id: id.to_string(),
            status: entry.fate.state(),
            response: entry.response.clone(),
            round: Some(entry.round),
            time_nanos: Some(entry.time_nanos),
        })
    }

    /// Whether request `id` is in the history.
    pub fn contains(&self, id: &str) -> bool {
        parse_id(id).is_some_and(|key| self.entries.contains_key(&key))
    }

    /// The entry of request `id`.
    pub fn get(&self, id: &str) -> Option<&HistoryEntry> {
        self.entries.get(&parse_id(id)?).map(|e| &**e)
    }

    /// Entries now.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there is no entry.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes of the results held.
    pub fn reply_bytes(&self) -> u64 {
        self.reply_bytes
    }

    /// The history's hash (none when empty, so the empty state's hash does
    /// not change): its entry count and the sum of its entries' digests.
    pub fn hash(&self) -> Option<[u8; 32]> {
        if self.entries.is_empty() {
            return None;
        }
        let mut h = Sha256::new();
        h.update(b"cellar-ingress-history\0");
        h.update((self.entries.len() as u64).to_le_bytes());
        for limb in self.sum {
            h.update(limb.to_le_bytes());
        }
        Some(h.finalize().into())
    }

    /// The entries, in id order, cheaply (shared), for a checkpoint.
    pub fn shared_entries(&self) -> Vec<Arc<HistoryEntry>> {
        self.entries.values().cloned().collect()
    }

    /// The limits.
    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cellar_types::{Reject, RejectCode};

    const S: u64 = 1_000_000_000;

    fn id(n: u8) -> String {
        HEXLOWER.encode(&[n; 32])
    }

    fn at(round: u64, index: u32) -> IngressId {
        IngressId { round, index }
    }

    fn replied(text: &str) -> CallResponse {
        CallResponse::Replied {
            reply: serde_json::json!(text),
            instructions: 7,
        }
    }

    fn limits() -> HistoryLimits {
        HistoryLimits {
            entries: 100,
            reply_bytes: 1 << 20,
            margin_nanos: 10 * S,
        }
    }

    /// Feeds a history the same rounds as another node would: induct,
    /// finish, prune by round time.
    fn feed(history: &mut IngressHistory, alice: &Principal) {
        let t = 1_000 * S;
        history.prune(t, 1);
        history
            .induct(
                &id(1),
                alice,
                t + 20 * S,
                ReplyEncoding::Wave,
                at(1, 0),
                1,
                t,
            )
            .unwrap();
        history
            .induct(
                &id(2),
                &Principal::anonymous(),
                t + 30 * S,
                ReplyEncoding::Json,
                at(1, 1),
                1,
                t,
            )
            .unwrap();
        history.finish(at(1, 0), replied("a"), 1, t);
        // A deferred reply, two rounds later.
        history.prune(t + S, 2);
        history.prune(t + 2 * S, 3);
        history.finish(at(1, 1), replied("b"), 3, t + 2 * S);
    }

    #[test]
    fn two_nodes_fed_the_same_rounds_prune_at_the_same_round() {
        let alice = Principal::self_authenticating(&[1; 32]);
        let (mut a, mut b) = (IngressHistory::new(limits()), IngressHistory::new(limits()));
        feed(&mut a, &alice);
        feed(&mut b, &alice);
        assert_eq!(a.hash(), b.hash());
        let t = 1_000 * S;
        // Before expiry: replied, only to its sender.
        let status = a.status(&id(1), &alice).unwrap();
        assert_eq!(status.status, RequestState::Replied);
        assert_eq!(status.response, Some(replied("a")));
        assert!(a.status(&id(1), &Principal::anonymous()).is_none());
        assert_eq!(
            a.status(&id(2), &Principal::anonymous()).unwrap().status,
            RequestState::Replied
        );
        assert!(a.status(&id(2), &alice).is_none());
        // Rounds at the same times on both: at the expiry the result goes
        // (done), after the margin the entry.
        for (round, time) in [(4, t + 19 * S), (5, t + 20 * S), (6, t + 29 * S)] {
            a.prune(time, round);
            b.prune(time, round);
            assert_eq!(a.hash(), b.hash());
        }
        let done = a.status(&id(1), &alice).unwrap();
        assert_eq!(done.status, RequestState::Done);
        assert_eq!(done.response, None);
        assert_eq!(a.get(&id(1)).unwrap().round, 5, "done at the expiry round");
        a.prune(t + 30 * S - 1, 7);
        assert!(a.contains(&id(1)), "kept until the expiry plus the margin");
        a.prune(t + 30 * S, 8);
        assert!(!a.contains(&id(1)));
        assert_eq!(
            a.status(&id(2), &Principal::anonymous()).unwrap().status,
            RequestState::Done
        );
        a.prune(t + 40 * S, 9);
        assert!(a.is_empty());
        assert_eq!(a.hash(), None);
        assert_eq!(a.reply_bytes(), 0);
    }

    #[test]
    fn a_request_still_processing_at_its_expiry_stays_until_it_finishes() {
        let alice = Principal::self_authenticating(&[1; 32]);
        let mut h = IngressHistory::new(limits());
        let t = 1_000 * S;
        h.induct(&id(1), &alice, t + S, ReplyEncoding::Wave, at(1, 0), 1, t)
            .unwrap();
        h.prune(t + 100 * S, 2);
        assert_eq!(
            h.status(&id(1), &alice).unwrap().status,
            RequestState::Processing
        );
        assert_eq!(h.processing_at(at(1, 0)), Some(ReplyEncoding::Wave));
        h.finish(at(1, 0), replied("late"), 3, t + 101 * S);
        assert_eq!(h.status(&id(1), &alice).unwrap().status, RequestState::Done);
        h.prune(t + 102 * S, 4);
        assert!(h.is_empty());
    }

    #[test]
    fn a_full_history_refuses_new_requests_and_keeps_live_ones() {
        let alice = Principal::self_authenticating(&[1; 32]);
        let mut h = IngressHistory::new(HistoryLimits {
            entries: 2,
            reply_bytes: 1 << 20,
            margin_nanos: S,
        });
        let t = 1_000 * S;
        for n in 0..2 {
            h.induct(
                &id(n),
                &alice,
                t + 10 * S,
                ReplyEncoding::Wave,
                at(1, n as u32),
                1,
                t,
            )
            .unwrap();
        }
        let refused = h.induct(
            &id(9),
            &alice,
            t + 10 * S,
            ReplyEncoding::Wave,
            at(1, 2),
            1,
            t,
        );
        assert_eq!(refused, Err(HistoryRefusal::Full));
        assert_eq!(
            refused.unwrap_err().to_string(),
            "the ingress history is full; retry later"
        );
        assert!(h.contains(&id(0)) && h.contains(&id(1)) && !h.contains(&id(9)));
        // Processing entries at their expiry: a round would look at them.
        assert!(!h.prune_due(t + 10 * S - 1) && h.prune_due(t + 10 * S));
        // A replay of a recorded id is refused as such.
        assert!(matches!(
            h.induct(
                &id(0),
                &alice,
                t + 10 * S,
                ReplyEncoding::Wave,
                at(2, 0),
                2,
                t
            ),
            Err(HistoryRefusal::Duplicate(_))
        ));
        // By reply bytes too.
        let mut small = IngressHistory::new(HistoryLimits {
            entries: 100,
            reply_bytes: 50,
            margin_nanos: S,
        });
        small
            .induct(
                &id(1),
                &alice,
                t + 10 * S,
                ReplyEncoding::Wave,
                at(1, 0),
                1,
                t,
            )
            .unwrap();
        small.finish(at(1, 0), replied(&"x".repeat(100)), 1, t);
        assert!(small.is_full());
        assert_eq!(
            small.induct(
                &id(2),
                &alice,
                t + 10 * S,
                ReplyEncoding::Wave,
                at(2, 0),
                2,
                t
            ),
            Err(HistoryRefusal::Full)
        );
        // Room again once the result is dropped at expiry.
        small.prune(t + 10 * S, 3);
        assert!(!small.is_full());
    }

    #[test]
    fn the_hash_follows_every_change_and_survives_a_round_trip() {
        let alice = Principal::self_authenticating(&[1; 32]);
        let mut h = IngressHistory::new(limits());
        assert_eq!(h.hash(), None);
        let t = 1_000 * S;
        h.induct(
            &id(1),
            &alice,
            t + 10 * S,
            ReplyEncoding::Wave,
            at(1, 0),
            1,
            t,
        )
        .unwrap();
        let processing = h.hash();
        assert!(processing.is_some());
        h.finish(
            at(1, 0),
            CallResponse::Rejected {
                reject: Reject::new(RejectCode::CanisterError, "no"),
                instructions: 1,
            },
            1,
            t,
        );
        let rejected = h.hash();
        assert_ne!(processing, rejected);
        // The same entries in another order hash the same, and so does
        // the history rebuilt from its entries (a checkpoint's).
        let entries: Vec<HistoryEntry> = h.shared_entries().iter().map(|e| (**e).clone()).collect();
        let json = serde_json::to_vec(&entries).unwrap();
        let back: Vec<HistoryEntry> = serde_json::from_slice(&json).unwrap();
        let rebuilt = IngressHistory::from_entries(limits(), back);
        assert_eq!(rebuilt.hash(), rejected);
        assert_eq!(rebuilt.reply_bytes(), h.reply_bytes());
        assert_eq!(
            rebuilt.status(&id(1), &alice).unwrap().status,
            RequestState::Rejected
        );
        // A processing entry keeps its place, so a deferred answer after a
        // restart from the checkpoint finishes it.
        h.induct(
            &id(2),
            &alice,
            t + 10 * S,
            ReplyEncoding::Json,
            at(2, 0),
            2,
            t,
        )
        .unwrap();
        let entries: Vec<HistoryEntry> = h.shared_entries().iter().map(|e| (**e).clone()).collect();
        let mut rebuilt = IngressHistory::from_entries(limits(), entries);
        assert_eq!(rebuilt.hash(), h.hash());
        assert_eq!(rebuilt.processing_at(at(2, 0)), Some(ReplyEncoding::Json));
        rebuilt.finish(at(2, 0), replied("x"), 3, t + S);
        h.finish(at(2, 0), replied("x"), 3, t + S);
        assert_eq!(rebuilt.hash(), h.hash());
        // Malformed ids are neither recorded nor refused.
        assert_eq!(
            h.induct("nope", &alice, t, ReplyEncoding::Wave, at(4, 0), 4, t),
            Ok(())
        );
        assert!(!h.contains("nope"));
    }

    /// The cost per request of recording its fate (induct, finish with a
    /// small reply, prune at expiry, removal) and of the hash, on a history
    /// of `N` live entries: `cargo test -p cellar-node history_cost --
    /// --ignored --nocapture`.
    #[test]
    #[ignore]
    fn history_cost() {
        const N: u64 = 200_000;
        let alice = Principal::self_authenticating(&[1; 32]);
        let mut h = IngressHistory::new(HistoryLimits::default());
        let t = 1_000 * S;
        let started = std::time::Instant::now();
        for n in 0..N {
            let id = HEXLOWER.encode(&Sha256::digest(n.to_le_bytes()));
            let at = at(n / 1000 + 1, (n % 1000) as u32);
            h.prune(t + n, at.round);
            h.induct(
                &id,
                &alice,
                t + 240 * S + n,
                ReplyEncoding::Wave,
                at,
                at.round,
                t + n,
            )
            .unwrap();
            h.finish(at, replied("42"), at.round, t + n);
        }
        let recorded = started.elapsed();
        let started = std::time::Instant::now();
        let hash = h.hash();
        let hashed = started.elapsed();
        let started = std::time::Instant::now();
        let entries = h.shared_entries();
        let shared = started.elapsed();
        let started = std::time::Instant::now();
        let json = serde_json::to_vec(&entries.iter().map(|e| &**e).collect::<Vec<_>>()).unwrap();
        let serialized = started.elapsed();
        let started = std::time::Instant::now();
        h.prune(t + 400 * S, u64::MAX);
        let pruned = started.elapsed();
        assert!(hash.is_some() && h.is_empty());
        eprintln!(
            "{N} requests: record {:.2} µs each; hash {hashed:?}; checkpoint handles {shared:?}, \
             JSON {serialized:?} ({} bytes, {} per entry); prune all {pruned:?}",
            recorded.as_secs_f64() * 1e6 / N as f64,
            json.len(),
            json.len() as u64 / N,
        );
    }
}
