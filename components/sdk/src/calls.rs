//! Inter-canister calls as `async` Rust, and deferred replies.
//!
//! ```ignore
//! use cellar_sdk::calls::{self, Deferred};
//!
//! // An update method that answers with what another canister returns.
//! fn lookup(kv: String, key: String) -> Option<u64> {
//!     let reply = calls::defer_reply();
//!     calls::spawn(async move {
//!         match calls::call::<Option<u64>>(&kv, "get", (key,)).await {
//!             Ok(value) => reply.reply(&value),
//!             Err(e) => reply.reject(&e.to_string()),
//!         }
//!     });
//!     None // ignored: the reply is deferred
//! }
//!
//! // The canister exports cellar:canister/callbacks and forwards on-reply:
//! // fn on_reply(id: u64, result: CallResult) { calls::handle_reply(id, result) }
//! ```
//!
//! How it works: [`call`] queues the call (sent when the current message
//! commits) and returns a future. [`spawn`] polls a task at once, so its
//! first call goes out with the current message; the task, kept in the
//! canister's heap (which persists), waits there until the reply arrives
//! as a new message to `on-reply`, where [`handle_reply`] stores it and
//! polls the waiting tasks again. Each callback runs as its own message.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use crate::CallId;
use crate::sys::cellar::canister::{calls as api_calls, message as api_message};
use crate::wave::{FromWave, ToWaveArgs};

/// What a call came back with, as the system delivers it to `on-reply`.
pub use api_calls::CallResult;
/// Why a call was rejected.
pub use api_message::RejectCode;

/// Why a call failed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CallError {
    /// The call could not be queued (bad callee, too many calls, not
    /// enough cycles).
    NotSent(String),
    /// The callee or the system rejected the call.
    Rejected {
        /// The reject code.
        code: RejectCode,
        /// The reason.
        message: String,
    },
    /// The reply did not decode as the expected type.
    BadReply(String),
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::NotSent(m) => write!(f, "the call was not sent: {m}"),
            CallError::Rejected { code, message } => write!(f, "rejected ({code:?}): {message}"),
            CallError::BadReply(m) => write!(f, "unexpected reply: {m}"),
        }
    }
}

type Task = Pin<Box<dyn Future<Output = ()>>>;

thread_local! {
    /// Replies that arrived and were not taken yet.
    static REPLIES: RefCell<BTreeMap<CallId, CallResult>> = const { RefCell::new(BTreeMap::new()) };
    /// Tasks waiting for replies.
    static TASKS: RefCell<Vec<Task>> = const { RefCell::new(Vec::new()) };
}

/// A call in flight; resolves to the callee's reply decoded as `T`.
pub struct Call<T> {
    id: Result<CallId, String>,
    _reply: PhantomData<fn() -> T>,
}

impl<T: FromWave> Future for Call<T> {
    type Output = Result<T, CallError>;

    fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<Self::Output> {
        let id = match &self.id {
            Ok(id) => *id,
            Err(e) => return Poll::Ready(Err(CallError::NotSent(e.clone()))),
        };
        match REPLIES.with(|r| r.borrow_mut().remove(&id)) {
            None => Poll::Pending,
            Some(CallResult::Reply(text)) => {
                Poll::Ready(T::from_wave(&text).map_err(CallError::BadReply))
            }
            Some(CallResult::Reject((code, message))) => {
                Poll::Ready(Err(CallError::Rejected { code, message }))
            }
        }
    }
}

/// Calls `method` of canister `callee` with `args` (a tuple of values, for
/// example `("apple", 5u64)`, or `()`), and resolves to its reply.
pub fn call<T: FromWave>(callee: &str, method: &str, args: impl ToWaveArgs) -> Call<T> {
    call_with_cycles(callee, method, args, 0)
}

/// Calls with an argument list already in WAVE text (for example
/// `("apple", 5)`); resolves to the reply's WAVE text.
pub fn call_raw(callee: &str, method: &str, args: &str, cycles: u64) -> Call<crate::wave::RawWave> {
    Call {
        id: api_calls::call(callee, method, args, cycles),
        _reply: PhantomData,
    }
}

/// Like [`call`], attaching `cycles` from this canister's balance (what the
/// callee does not accept comes back).
pub fn call_with_cycles<T: FromWave>(
    callee: &str,
    method: &str,
    args: impl ToWaveArgs,
    cycles: u64,
) -> Call<T> {
    let id = api_calls::call(callee, method, &args.to_wave_args(), cycles);
    Call {
        id,
        _reply: PhantomData,
    }
}

/// Runs `task` until it waits for a reply, and again each time one
/// arrives.
pub fn spawn(task: impl Future<Output = ()> + 'static) {
    let mut task: Task = Box::pin(task);
    if task.as_mut().poll(&mut Context::from_waker(Waker::noop())) == Poll::Pending {
        TASKS.with(|t| t.borrow_mut().push(task));
    }
}

/// Delivers a call's result; call it from the exported
/// `cellar:canister/callbacks.on-reply`.
pub fn handle_reply(id: CallId, result: CallResult) {
    REPLIES.with(|r| r.borrow_mut().insert(id, result));
    let tasks = TASKS.with(|t| std::mem::take(&mut *t.borrow_mut()));
    let mut waiting = Vec::with_capacity(tasks.len());
    for mut task in tasks {
        if task.as_mut().poll(&mut Context::from_waker(Waker::noop())) == Poll::Pending {
            waiting.push(task);
        }
    }
    TASKS.with(|t| t.borrow_mut().extend(waiting));
}

/// Tasks still waiting for replies.
pub fn pending_tasks() -> usize {
    TASKS.with(|t| t.borrow().len())
}

/// The promise to answer the current message later.
#[derive(Debug)]
pub struct Deferred {
    token: u64,
}

/// Defers the current update message's reply: its return value is ignored
/// and the caller gets what [`Deferred::reply`] (or `reject`) sends later.
///
/// Works the same in a composite query (a method of an exported
/// `composite-query` interface), whose calls go to query methods.
///
/// # Panics
/// In a plain query (plain queries cannot defer).
pub fn defer_reply() -> Deferred {
    let token = api_message::defer_reply().unwrap_or_else(|e| panic!("{e}"));
    Deferred { token }
}

impl Deferred {
    /// Answers with `value`, which must have the method's result type.
    pub fn reply<T: crate::wave::ToWave + ?Sized>(self, value: &T) {
        let mut text = String::new();
        value.to_wave(&mut text);
        if let Err(e) = api_message::reply_to(self.token, &text) {
            crate::log::error(&format!("cannot reply: {e}"));
        }
    }

    /// Answers a method without result.
    pub fn reply_empty(self) {
        if let Err(e) = api_message::reply_to(self.token, "()") {
            crate::log::error(&format!("cannot reply: {e}"));
        }
    }

    /// Rejects the deferred message.
    pub fn reject(self, message: &str) {
        if let Err(e) = api_message::reject_to(self.token, message) {
            crate::log::error(&format!("cannot reject: {e}"));
        }
    }
}
