//! Counters of what the transport did, for operators and tests.

use std::sync::atomic::{AtomicU64, Ordering};

/// Counters of what the transport did since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TransportStats {
    /// Artifacts handed to the application.
    pub delivered: u64,
    /// Artifacts received again and dropped by deduplication.
    pub duplicates: u64,
    /// Messages dropped because a peer's send queue was full.
    pub send_dropped: u64,
    /// Connections dropped because the peer broke the protocol.
    pub misbehaviours: u64,
    /// Incoming connections refused (failed handshakes: non-members,
    /// wrong protocol; and banned peers).
    pub refused: u64,
    /// Outgoing connections established (first connections and reconnects).
    pub connects: u64,
    /// Outgoing connections dropped and dialed again because the peer came
    /// back (restarted) before they failed by themselves.
    pub returns: u64,
    /// Pull requests answered from the cache.
    pub requests_answered: u64,
}

/// The atomic counters behind [`TransportStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// See [`TransportStats::delivered`].
    pub(crate) delivered: AtomicU64,
    /// See [`TransportStats::duplicates`].
    pub(crate) duplicates: AtomicU64,
    /// See [`TransportStats::send_dropped`].
    pub(crate) send_dropped: AtomicU64,
    /// See [`TransportStats::misbehaviours`].
    pub(crate) misbehaviours: AtomicU64,
    /// See [`TransportStats::refused`].
    pub(crate) refused: AtomicU64,
    /// See [`TransportStats::connects`].
    pub(crate) connects: AtomicU64,
    /// See [`TransportStats::returns`].
    pub(crate) returns: AtomicU64,
    /// See [`TransportStats::requests_answered`].
    pub(crate) requests_answered: AtomicU64,
}

impl Counters {
    /// Adds one to `counter`.
    pub(crate) fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// A snapshot.
    pub(crate) fn snapshot(&self) -> TransportStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        TransportStats {
            delivered: get(&self.delivered),
            duplicates: get(&self.duplicates),
            send_dropped: get(&self.send_dropped),
            misbehaviours: get(&self.misbehaviours),
            refused: get(&self.refused),
            connects: get(&self.connects),
            returns: get(&self.returns),
            requests_answered: get(&self.requests_answered),
        }
    }
}
