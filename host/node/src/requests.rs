//! Ingress requests: expiry checks, replay protection, request statuses and
//! the ingress queue that executes updates in arrival order.
//!
//! Every request that changes anything carries an ingress expiry and has an
//! id derived from its signed content ([`cellar_types::api::request_id`]).
//! [`Requests`] is the node-local part: it remembers each id admitted here
//! until its expiry (with [`Node::knows_request`], the replicated ingress
//! history of executed requests, the HTTP layer refuses a replay for as
//! long as the request would otherwise be accepted; once it has expired it
//! is refused as expired), and the status of requests admitted here and
//! not yet in the history (received, processing before their round, or
//! refused before reaching one). Once a round inducts a request its status
//! comes from the history (`history.rs`), the same on every replica and
//! across restarts. `GET /api/v1/requests/{id}` answers from the ingress
//! history first ([`Node::request_status`], shown only to the request's
//! sender, the anonymous principal for unsigned ones), then from this
//! table. Admission refuses an id the history holds (409) and new requests
//! while the table is full (503); an id admitted here is kept until its
//! ingress expiry.
//!
//! [`Ingress`] is the queue whose 32 worker threads hand updates to the
//! node: updates that arrive together share a round; synchronous calls
//! wait on a oneshot, submissions are polled.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use cellar_types::api::{
    CallRequest, CallResponse, INGRESS_EXPIRY_SKEW_NANOS, MAX_INGRESS_EXPIRY_NANOS, RequestState,
    RequestStatus,
};
use cellar_types::{Principal, Reject, RejectCode};

use crate::metrics::{Kind, Metrics};
use crate::node::{CallOutcome, Node, NodeError};
pub use cellar_execution::{call_response, refused_response};

/// Requests the table remembers at most; past this new requests are
/// refused until old ones expire.
pub const DEFAULT_CAPACITY: usize = 1_000_000;

/// Updates waiting in the ingress queue at most.
pub const QUEUE_CAPACITY: usize = 10_000;

/// Nanoseconds since the Unix epoch, by the wall clock.
pub fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Why a request was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// No ingress expiry on a request that needs one.
    #[error("the request has no ingress expiry (header x-cellar-ingress-expiry)")]
    MissingExpiry,
    /// The expiry has passed.
    #[error("the request expired {0} ms ago")]
    Expired(u64),
    /// The expiry is too far ahead.
    #[error("the ingress expiry is more than {} s in the future", MAX_INGRESS_EXPIRY_NANOS / 1_000_000_000)]
    TooFarAhead,
    /// The same request was seen before.
    #[error("request {0} was already received; a replay is not executed again")]
    Replay(String),
    /// The table is full.
    #[error("the node tracks too many requests; retry later")]
    Full,
    /// The ingress history is full.
    #[error("the ingress history is full; retry later")]
    HistoryFull,
}

/// Checks an ingress expiry against the time `now` (both nanoseconds).
pub fn check_expiry(expiry: Option<u64>, now: u64) -> Result<u64, Refusal> {
    let expiry = expiry.ok_or(Refusal::MissingExpiry)?;
    if expiry <= now {
        return Err(Refusal::Expired((now - expiry) / 1_000_000));
    }
    if expiry - now > MAX_INGRESS_EXPIRY_NANOS + INGRESS_EXPIRY_SKEW_NANOS {
        return Err(Refusal::TooFarAhead);
    }
    Ok(expiry)
}

struct Entry {
    expiry: u64,
    caller: Principal,
    state: RequestState,
    response: Option<CallResponse>,
}

#[derive(Default)]
struct Table {
    entries: HashMap<String, Entry>,
    by_expiry: BTreeSet<(u64, String)>,
}

/// The replay cache and request statuses, bounded by a capacity.
pub struct Requests {
    table: Mutex<Table>,
    capacity: usize,
}

impl Requests {
    /// An empty table of at most `capacity` requests.
    pub fn new(capacity: usize) -> Self {
        Requests {
            table: Mutex::new(Table::default()),
            capacity,
        }
    }

    /// Admits a request seen at `now`: checks its expiry and that its id is
    /// new, and remembers it as received until it expires.
    pub fn admit(
        &self,
        id: &str,
        caller: &Principal,
        expiry: Option<u64>,
        now: u64,
    ) -> Result<(), Refusal> {
        let expiry = check_expiry(expiry, now)?;
        let mut table = self.table.lock().expect("request table");
        // Forget what expired: such ids are refused as expired from now on.
        while let Some((first, _)) = table.by_expiry.first() {
            if *first > now {
                break;
            }
            let (_, old) = table.by_expiry.pop_first().expect("non-empty");
            table.entries.remove(&old);
        }
        if table.entries.contains_key(id) {
            return Err(Refusal::Replay(id.to_string()));
        }
        if table.entries.len() >= self.capacity {
            return Err(Refusal::Full);
        }
        table.entries.insert(
            id.to_string(),
            Entry {
                expiry,
                caller: caller.clone(),
                state: RequestState::Received,
                response: None,
            },
        );
        table.by_expiry.insert((expiry, id.to_string()));
        Ok(())
    }

    /// Records a request's progress.
    pub fn set(&self, id: &str, state: RequestState, response: Option<CallResponse>) {
        let mut table = self.table.lock().expect("request table");
        if let Some(entry) = table.entries.get_mut(id) {
            entry.state = state;
            entry.response = response;
        }
    }

    /// A request's status as `caller` may see it: only the sender reads a
    /// request's result; to anyone else (and after expiry) it is unknown.
    pub fn status(&self, id: &str, caller: &Principal, now: u64) -> RequestStatus {
        let table = self.table.lock().expect("request table");
        match table.entries.get(id) {
            Some(entry) if &entry.caller == caller && entry.expiry > now => RequestStatus {
                request_id: id.to_string(),
                status: entry.state,
                response: entry.response.clone(),
                round: None,
                time_nanos: None,
            },
            _ => RequestStatus {
                request_id: id.to_string(),
                status: RequestState::Unknown,
                response: None,
                round: None,
                time_nanos: None,
            },
        }
    }

    /// Requests remembered now.
    pub fn len(&self) -> usize {
        self.table.lock().expect("request table").entries.len()
    }

    /// Whether no request is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The final state of a request that answered `response`.
pub(crate) fn state_of(response: &CallResponse) -> RequestState {
    match response {
        CallResponse::Replied { .. } => RequestState::Replied,
        CallResponse::Rejected { .. } => RequestState::Rejected,
    }
}

/// An update waiting in the ingress queue.
pub struct Job {
    /// The request id.
    pub request_id: String,
    /// The id and expiry to journal with it (see [`Node::tagged`]).
    pub tag: Option<crate::RequestTag>,
    /// The signed request as sent (replica mode checks it everywhere).
    pub envelope: Option<crate::replica_link::Envelope>,
    /// The sender.
    pub caller: Principal,
    /// The canister.
    pub canister: Principal,
    /// The call.
    pub request: CallRequest,
    /// Where a synchronous caller waits for the answer.
    pub reply: Option<tokio::sync::oneshot::Sender<Result<CallResponse, NodeError>>>,
}

/// The ingress queue is full (or stopped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueFull;

/// Threads that hand queued updates to the node.
const INGRESS_WORKERS: usize = 32;

/// The ingress queue: updates wait here, in arrival order, for a worker to
/// hand them to the node.
pub struct Ingress {
    sender: mpsc::SyncSender<Job>,
    queued: Arc<AtomicU64>,
}

impl Ingress {
    /// Starts the workers over `node`; they stop when the queue is dropped.
    ///
    /// Several workers hand updates to the node at once, so updates that
    /// arrive together share a round (the node batches what is waiting),
    /// and an update that waits for other canisters or runs across rounds
    /// does not hold up the others.
    pub fn start(node: Arc<Node>, requests: Arc<Requests>, metrics: Arc<Metrics>) -> Self {
        let (sender, receiver) = mpsc::sync_channel::<Job>(QUEUE_CAPACITY);
        let receiver = Arc::new(std::sync::Mutex::new(receiver));
        let queued = Arc::new(AtomicU64::new(0));
        for worker in 0..INGRESS_WORKERS {
            let receiver = receiver.clone();
            let counter = queued.clone();
            let node = node.clone();
            let requests = requests.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("cellar-ingress-{worker}"))
                .spawn(move || {
                    loop {
                        let job = match receiver.lock().expect("ingress queue lock").recv() {
                            Ok(job) => job,
                            Err(_) => break,
                        };
                        counter.fetch_sub(1, Ordering::Relaxed);
                        let id = job.request_id.clone();
                        // A bug in one update must not stop the queue.
                        let run = std::panic::AssertUnwindSafe(|| {
                            run_job(&node, &requests, &metrics, job)
                        });
                        if std::panic::catch_unwind(run).is_err() {
                            tracing::error!(request = %id, "an update panicked");
                            let reject = CallResponse::Rejected {
                                reject: Reject::new(
                                    RejectCode::SystemTransient,
                                    "the node failed while executing the update",
                                ),
                                instructions: 0,
                            };
                            requests.set(&id, RequestState::Rejected, Some(reject));
                        }
                    }
                })
                .expect("cannot start an ingress thread");
        }
        Ingress { sender, queued }
    }

    /// Queues an update; fails (dropping it) when the queue is full.
    pub fn push(&self, job: Job) -> Result<(), QueueFull> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.sender.try_send(job).map_err(|_| {
            self.queued.fetch_sub(1, Ordering::Relaxed);
            QueueFull
        })
    }

    /// Updates waiting.
    pub fn queued(&self) -> u64 {
        self.queued.load(Ordering::Relaxed)
    }
}

fn run_job(node: &Node, requests: &Arc<Requests>, metrics: &Arc<Metrics>, job: Job) {
    requests.set(&job.request_id, RequestState::Processing, None);
    let started = Instant::now();
    let Job {
        request_id,
        mut tag,
        envelope,
        caller,
        canister,
        request,
        reply,
    } = job;
    let (requests, metrics) = (requests.clone(), metrics.clone());
    let CallRequest {
        method,
        args,
        reply_encoding,
        ..
    } = request;
    if let Some(tag) = &mut tag {
        tag.encoding = reply_encoding;
    }
    let recorded_method = method.clone();
    let recorded_canister = canister.clone();
    // In replica mode this runs when a finalized batch answered the
    // update, not on this worker: the worker is free at once.
    let finish = move |result: Result<CallOutcome, NodeError>| {
        let result = result.map(|outcome| {
            metrics.record_call(
                Kind::Update,
                &recorded_canister,
                &recorded_method,
                outcome.result.is_ok(),
                outcome.instructions,
                started.elapsed(),
            );
            call_response(outcome, reply_encoding)
        });
        let response = match &result {
            Ok(response) => response.clone(),
            Err(e) => {
                metrics.record_refused();
                refused_response(e)
            }
        };
        requests.set(&request_id, state_of(&response), Some(response));
        if let Some(reply) = reply {
            let _ = reply.send(result);
        }
    };
    Node::tagged(tag, || {
        crate::replica_link::with_envelope(envelope, || {
            node.submit_update(&caller, &canister, &method, args, finish)
        })
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = 1_000_000_000;

    #[test]
    fn expiry_window() {
        let now = 1_000 * S;
        assert_eq!(check_expiry(None, now), Err(Refusal::MissingExpiry));
        assert!(matches!(
            check_expiry(Some(now - S), now),
            Err(Refusal::Expired(1000))
        ));
        assert_eq!(check_expiry(Some(now), now), Err(Refusal::Expired(0)));
        assert_eq!(check_expiry(Some(now + 60 * S), now), Ok(now + 60 * S));
        assert_eq!(
            check_expiry(Some(now + 400 * S), now),
            Err(Refusal::TooFarAhead)
        );
    }

    #[test]
    fn replays_are_refused_until_expiry_and_the_table_is_bounded() {
        let requests = Requests::new(2);
        let alice = Principal::self_authenticating(&[1; 32]);
        let now = 1_000 * S;
        requests
            .admit("a", &alice, Some(now + 10 * S), now)
            .unwrap();
        assert_eq!(
            requests.admit("a", &alice, Some(now + 10 * S), now + S),
            Err(Refusal::Replay("a".into()))
        );
        requests
            .admit("b", &alice, Some(now + 20 * S), now)
            .unwrap();
        assert_eq!(
            requests.admit("c", &alice, Some(now + 20 * S), now),
            Err(Refusal::Full)
        );
        // After a's expiry: a is forgotten (and refused as expired), c fits.
        let later = now + 11 * S;
        assert!(matches!(
            requests.admit("a", &alice, Some(now + 10 * S), later),
            Err(Refusal::Expired(_))
        ));
        requests.admit("c", &alice, Some(later + S), later).unwrap();
        assert_eq!(requests.len(), 2);
        // Statuses: the sender sees them, others do not.
        requests.set("b", RequestState::Processing, None);
        assert_eq!(
            requests.status("b", &alice, later).status,
            RequestState::Processing
        );
        let bob = Principal::self_authenticating(&[2; 32]);
        assert_eq!(
            requests.status("b", &bob, later).status,
            RequestState::Unknown
        );
        assert_eq!(
            requests.status("zz", &alice, later).status,
            RequestState::Unknown
        );
    }
}
