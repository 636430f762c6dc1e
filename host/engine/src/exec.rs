//! Executing one message: a fresh instance, the committed heap mapped in,
//! one call, and the outcome.
//!
//! A wasmtime trap poisons the instance it happened in, so every message
//! gets a new instance, never a reused one (cheap through the cached
//! `InstancePre`); [`WarmInstance`] exists only as a benchmark baseline.
//! [`execute`] runs one message in these steps:
//!
//! 1. instantiate the component from the cached `InstancePre`, its memories
//!    created at the committed sizes (`memory`; kept memories are lent
//!    before instantiation, see `lending`);
//! 2. arm each memory with the committed [`PageMap`] through the memory
//!    tracker (`tracker`). Nothing is copied: pages are mapped when
//!    touched, or a large memory's image is mapped privately (`image`);
//! 3. set the fuel to the message's instruction limit (the update or the
//!    query limit of [`Limits`]);
//! 4. call `cellar-globals-restore` (the globals come back from the globals
//!    page, see `globals`), call the export and, for a message whose
//!    changes may persist, `cellar-globals-save`; the accessor runs on its
//!    own fuel, not charged to the canister;
//! 5. build the outcome. A trap, running out of fuel, changing more pages
//!    than `Limits::max_dirty_pages_per_message` (counted
//!    deterministically, as [`MessageOutcome::delta_pages`]) or a host
//!    error returns a reject and no changes. Success returns the results and
//!    [`StateChanges`]: the new heap is the committed page map with the
//!    dirty pages replaced (cost proportional to the pages written), plus
//!    the stable overlay, certified data and timers.
//!
//! Nothing reaches committed state unless the message succeeded: host
//! functions write into `SystemState`, and [`StateChanges`] come back only
//! for successful messages whose changes may persist (not for queries; a
//! composite query's carry only to its next callback and are never
//! committed). Nothing the message did reaches [`ExecutionState`] unless the
//! caller applies them. [`execute_sliced`] runs the same steps for an update
//! that may take more than one round: the call yields every
//! `Limits::slice_instructions` and [`PausedExecution::resume`] continues
//! it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use cellar_types::{Reject, RejectCode};
use wasmtime::component::{ResourceTable, Val};
use wasmtime::{Store, StoreLimitsBuilder, Trap};
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;

use crate::cache::CanisterCode;
use crate::config::Limits;
use crate::interface::Method;
use crate::lending::Lending;
use crate::memory::{with_kept_memories, with_memory_plan};
use crate::message_context::{LogLevel, LogRecord, MessageContext, MessageKind};
use crate::page::PAGE_SIZE;
use crate::paging::{MemoryImage, PageMap};
use crate::rng::{TapeRng, derive_seed};
use crate::stable::StableOverlay;
use crate::state::StateChanges;
use crate::state::{ExecutionState, HeapSnapshot};
use crate::system_api::{HostState, SystemState};
use crate::tracker::{self, ArmGuard, Armed, TrackingStats, scan};
use crate::version_cache::Lineage;
use crate::wasi::deterministic_wasi;

/// The result of one message.
#[derive(Debug)]
pub struct MessageOutcome {
    /// The reply values, or the reject.
    pub result: Result<Vec<Val>, Reject>,
    /// State changes to commit; `None` when nothing may persist (queries,
    /// traps, running out of instructions). A composite query's messages
    /// return them for its next callback; the node never commits them.
    pub changes: Option<StateChanges>,
    /// Log records written (system API, stdout, stderr), also on failure.
    pub logs: Vec<LogRecord>,
    /// Instructions the call executed (excluding instantiation).
    pub instructions: u64,
    /// Page faults and dirty pages of the call.
    pub tracking: TrackingStats,
    /// The 4 KiB pages the message changes: heap pages whose contents
    /// differ from the committed ones, plus stable-memory chunks written.
    /// Unlike `tracking.dirty_pages` (what a tracker saw written) it is the
    /// same on every replica and with every memory tracker, so budgets
    /// count it. Zero when nothing persists (queries, rejects).
    pub delta_pages: u64,
}

impl MessageKind {
    fn instruction_limit(self, limits: &Limits) -> u64 {
        match self {
            MessageKind::Query | MessageKind::CompositeQuery => limits.query_instructions,
            _ => limits.update_instructions,
        }
    }

    fn persists(self) -> bool {
        self != MessageKind::Query
    }
}

/// Runs `method` of `code` with `params` against `state`.
///
/// The call never panics on canister misbehaviour: traps, running out of
/// instructions and host errors all become a reject with
/// [`RejectCode::CanisterError`] and no state changes.
pub fn execute(
    code: &CanisterCode,
    state: &ExecutionState,
    method: &Method,
    params: &[Val],
    ctx: MessageContext,
    limits: &Limits,
) -> MessageOutcome {
    let (execution, mut store) = Execution::new(code, state, ctx, limits);
    let outcome = run(
        &mut store,
        code,
        state,
        method,
        params,
        execution.instruction_limit,
        limits,
    );
    execution.finish(store, outcome)
}

/// The parts of a message's execution that outlive its store's calls:
/// output pipes and limits.
struct Execution {
    kind: MessageKind,
    instruction_limit: u64,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl Execution {
    /// Builds the store of a message against `state`.
    fn new(
        code: &CanisterCode,
        state: &ExecutionState,
        ctx: MessageContext,
        limits: &Limits,
    ) -> (Self, Store<HostState>) {
        let kind = ctx.kind;
        let instruction_limit = kind.instruction_limit(limits);
        let stdout = MemoryOutputPipe::new(limits.max_log_bytes_per_message);
        let stderr = MemoryOutputPipe::new(limits.max_log_bytes_per_message);
        let seed = ctx.random_seed;
        let host = HostState {
            wasi: deterministic_wasi(ctx.time_nanos, seed, stdout.clone(), stderr.clone()),
            table: ResourceTable::new(),
            sys: SystemState {
                instruction_limit,
                rejected: None,
                cycles_accepted: 0,
                stable: StableOverlay::new(state.stable.clone(), limits.max_stable_bytes),
                certified_data: None,
                timers: state.timers.clone(),
                next_timer_id: state.next_timer_id,
                timers_changed: false,
                calls: Vec::new(),
                next_call_id: state.next_call_id,
                cycles_reserved: 0,
                deferred: false,
                late_replies: Vec::new(),
                logs: Vec::new(),
                log_budget: limits.max_log_bytes_per_message,
                rand: TapeRng::new(derive_seed("raw-rand", &[&seed])),
                ctx,
            },
            limits: StoreLimitsBuilder::new()
                .memory_size(4 << 30)
                .instances(64)
                .tables(64)
                .memories(64)
                .table_elements(1 << 20)
                .build(),
        };
        let mut store = Store::new(code.engine(), host);
        store.limiter(|data| &mut data.limits);
        (
            Execution {
                kind,
                instruction_limit,
                stdout,
                stderr,
            },
            store,
        )
    }

    /// Turns what the call did into the message's outcome.
    fn finish(
        self,
        mut store: Store<HostState>,
        outcome: Result<Completed, Reject>,
    ) -> MessageOutcome {
        let Execution {
            kind,
            instruction_limit,
            stdout,
            stderr,
        } = self;
        let mut sys_logs = std::mem::take(&mut store.data_mut().sys.logs);
        let instructions = instruction_limit.saturating_sub(store.get_fuel().unwrap_or(0));
        let (result, heap, tracking, delta_pages) = match outcome {
            Ok(c) => (Ok(c.results), Some(c.heap), c.stats, c.delta_pages),
            Err(reject) => (Err(reject), None, TrackingStats::default(), 0),
        };
        let stderr_text = String::from_utf8_lossy(&stderr.contents()).into_owned();
        let time = store.data().sys.ctx.time_nanos;
        append_stream_logs(&mut sys_logs, &stdout.contents(), LogLevel::Info, time);
        append_stream_logs(&mut sys_logs, stderr_text.as_bytes(), LogLevel::Error, time);

        match result {
            Err(mut reject) => {
                if reject.code == RejectCode::CanisterError {
                    let tail = stderr_tail(&stderr_text);
                    if !tail.is_empty() {
                        reject
                            .message
                            .push_str(&format!("; canister stderr: {tail}"));
                    }
                }
                MessageOutcome {
                    result: Err(reject),
                    changes: None,
                    logs: sys_logs,
                    instructions,
                    tracking,
                    delta_pages: 0,
                }
            }
            Ok(values) => {
                let sys = &mut store.data_mut().sys;
                let result = match sys.rejected.take() {
                    Some(message) => Err(Reject::new(RejectCode::CanisterReject, message)),
                    None => Ok(values),
                };
                let changes = kind.persists().then(|| {
                    let stable =
                        std::mem::replace(&mut sys.stable, StableOverlay::new(Arc::default(), 0))
                            .into_committed();
                    StateChanges {
                        heap: heap.expect("a successful message has a heap"),
                        stable,
                        certified_data: sys.certified_data.take(),
                        timers: sys
                            .timers_changed
                            .then(|| (std::mem::take(&mut sys.timers), sys.next_timer_id)),
                        cycles_accepted: sys.cycles_accepted,
                        calls: std::mem::take(&mut sys.calls),
                        next_call_id: sys.next_call_id,
                        deferred: sys.deferred,
                        late_replies: std::mem::take(&mut sys.late_replies),
                    }
                });
                let delta_pages = if changes.is_some() { delta_pages } else { 0 };
                MessageOutcome {
                    result,
                    changes,
                    logs: sys_logs,
                    instructions,
                    tracking,
                    delta_pages,
                }
            }
        }
    }
}

/// Instantiates, arms the memories with the committed heap and calls;
/// returns the results and, for a commit, the new heap.
fn run(
    store: &mut Store<HostState>,
    code: &CanisterCode,
    state: &ExecutionState,
    method: &Method,
    params: &[Val],
    instruction_limit: u64,
    limits: &Limits,
) -> Result<Completed, Reject> {
    let mut prepared = prepare(store, code, state, method, instruction_limit, limits)?;
    let mut results = vec![Val::Bool(false); method.results.len()];
    let called = {
        let _armed = ArmGuard::new(&mut prepared.tracked);
        // Persisted mutable globals (see `globals`): loaded before the call,
        // saved after it when the message's changes may persist.
        let (globals, instance, persists) = (code.globals, prepared.instance, prepared.persists);
        globals
            .map_or(Ok(()), |g| g.restore(store, &instance))
            .and_then(|()| prepared.func.call(&mut *store, params, &mut results))
            .and_then(|()| match globals {
                Some(g) if persists => g.save(store, &instance),
                _ => Ok(()),
            })
    };
    called.map_err(|e| trap_reject(e, "execution", instruction_limit))?;
    complete(store, state, prepared, results, limits)
}

/// An instance ready to run a message: its function, its memories armed
/// with the committed heap.
struct Prepared {
    instance: wasmtime::component::Instance,
    /// Whether the message's changes may persist (not a query).
    persists: bool,
    func: wasmtime::component::Func,
    views: Vec<crate::memory::MemoryView>,
    tracked: Vec<Armed>,
    /// The committed page map each memory was armed with.
    bases: Vec<PageMap>,
    started: std::time::Instant,
    setup_nanos: u64,
}

/// Instantiates the component with the committed memory sizes, arms its
/// memories and sets the message's fuel.
fn prepare(
    store: &mut Store<HostState>,
    code: &CanisterCode,
    state: &ExecutionState,
    method: &Method,
    instruction_limit: u64,
    limits: &Limits,
) -> Result<Prepared, Reject> {
    let started = std::time::Instant::now();
    let sizes: Vec<usize> = state
        .heap
        .memories
        .iter()
        .map(|m| m.size as usize)
        .collect();
    store
        .set_fuel(limits.instantiation_instructions)
        .map_err(host_error)?;
    let mechanism = limits.memory_tracker;
    let persists = store.data().sys.ctx.kind.persists();
    // Kept memories (`uffd-mapped`): lent before instantiation, which
    // creates the memories in them.
    let canister = store.data().sys.ctx.canister_id.clone();
    let mut lending = mechanism
        .keeps(&state.heap, &canister)
        .then(|| Lending::lend(&state.heap, &canister, persists));
    let kept = lending
        .as_ref()
        .map(Lending::kept_memories)
        .unwrap_or_default();
    let (instance, views) = {
        // Instantiation writes the data segments into kept memories, whose
        // missing pages are loaded by the fault handlers.
        let _armed = lending.as_mut().map(|l| ArmGuard::new(l.armed_mut()));
        with_kept_memories(sizes, kept, || code.pre.instantiate(&mut *store))
    };
    let instance =
        instance.map_err(|e| trap_reject(e, "instantiation", limits.instantiation_instructions))?;
    if !state.heap.memories.is_empty() && views.len() != state.heap.memories.len() {
        return Err(Reject::new(
            RejectCode::CanisterError,
            format!(
                "the canister's code defines {} memories but its state holds {}",
                views.len(),
                state.heap.memories.len()
            ),
        ));
    }
    let arm_error = |e| host_error(wasmtime::format_err!("cannot arm a linear memory: {e}"));
    let (tracked, bases) = match lending {
        Some(lending) => {
            let bases: Vec<PageMap> = state
                .heap
                .memories
                .iter()
                .map(|m| m.pages.clone())
                .collect();
            // SAFETY: the store is alive and no wasm runs.
            let tracked =
                unsafe { lending.arm(&views, &bases, code.hash, code.has_start, persists) }
                    .map_err(arm_error)?;
            (tracked, bases)
        }
        None => {
            let mut tracked = Vec::with_capacity(views.len());
            let mut bases = Vec::with_capacity(views.len());
            for (i, view) in views.iter().enumerate() {
                // SAFETY: the store is alive and no wasm runs.
                let committed = match state.heap.memories.get(i) {
                    Some(image) => image.pages.clone(),
                    // First run of this code: its data segments are the base image.
                    None => unsafe { scan(view) },
                };
                bases.push(committed.clone());
                // SAFETY: as above.
                let lineage = Lineage {
                    canister: canister.clone(),
                    memory: i,
                };
                let memory = unsafe { Armed::arm(mechanism, view, committed, &lineage) }
                    .map_err(arm_error)?;
                tracked.push(memory);
            }
            (tracked, bases)
        }
    };
    let func = instance
        .get_func(&mut *store, method.index)
        .ok_or_else(|| {
            Reject::new(
                RejectCode::DestinationInvalid,
                format!("the canister does not export {}", method.qualified_name()),
            )
        })?;
    store.set_fuel(instruction_limit).map_err(host_error)?;
    let setup_nanos = started.elapsed().as_nanos() as u64;
    Ok(Prepared {
        instance,
        persists,
        func,
        views,
        tracked,
        bases,
        started,
        setup_nanos,
    })
}

/// What a successful call leaves: its results, the new heap, the tracking
/// figures and the deterministic count of changed pages.
struct Completed {
    results: Vec<Val>,
    heap: HeapSnapshot,
    stats: TrackingStats,
    delta_pages: u64,
}

/// After a successful call: the new heap (committed page maps) and the
/// tracking figures; a message that changes more pages than
/// `max_dirty_pages_per_message` is rejected and its changes dropped.
fn complete(
    store: &mut Store<HostState>,
    state: &ExecutionState,
    prepared: Prepared,
    results: Vec<Val>,
    limits: &Limits,
) -> Result<Completed, Reject> {
    let Prepared {
        persists,
        views,
        tracked,
        bases,
        started,
        setup_nanos,
        ..
    } = prepared;
    let call_nanos = (started.elapsed().as_nanos() as u64).saturating_sub(setup_nanos);
    // A query's writes are discarded: nothing to build (and a memory image
    // must keep the committed version).
    let (heap, heap_delta, stable_delta) = if !persists {
        (state.heap.clone(), 0, 0)
    } else {
        // Each commit counts the pages whose contents changed (a tracker
        // may also report pages written with the bytes they held): the same
        // on every replica, whatever its tracker.
        let mut heap_delta = 0;
        let memories: Vec<MemoryImage> = views
            .iter()
            .zip(&tracked)
            .map(|(view, memory)| {
                // SAFETY: the store is alive, no wasm runs, no guard is armed.
                let (pages, changed) = unsafe { memory.commit() };
                heap_delta += changed;
                MemoryImage {
                    size: view.len() as u64,
                    pages,
                }
            })
            .collect();
        debug_assert_eq!(
            heap_delta,
            memories
                .iter()
                .zip(&bases)
                .map(|(new, base)| new.pages.diff(base).len() as u64)
                .sum::<u64>(),
            "a commit's count of changed pages disagrees with the diff"
        );
        let stable_delta = store.data().sys.stable.written_chunks();
        (HeapSnapshot { memories }, heap_delta, stable_delta)
    };
    let delta_pages = heap_delta + stable_delta;
    let stats = TrackingStats {
        setup_nanos,
        call_nanos,
        commit_nanos: (started.elapsed().as_nanos() as u64)
            .saturating_sub(setup_nanos + call_nanos),
        ..tracker::stats(&tracked)
    };
    if delta_pages > limits.max_dirty_pages_per_message {
        // Not confirmed: kept memories go back to the committed version.
        return Err(Reject::new(
            RejectCode::CanisterError,
            format!(
                "the message changed {delta_pages} pages of memory; the limit is {} pages ({} MiB) \
                 per message, so its changes were discarded",
                limits.max_dirty_pages_per_message,
                (limits.max_dirty_pages_per_message * PAGE_SIZE as u64) >> 20
            ),
        ));
    }
    if persists {
        // Kept memories now hold the new version.
        tracked.iter().for_each(Armed::confirm);
        limits.memory_tracker.record_update(
            &state.heap,
            &store.data().sys.ctx.canister_id,
            heap_delta,
        );
    }
    Ok(Completed {
        results,
        heap,
        stats,
        delta_pages,
    })
}

/// Where a sliced message stands after a round.
pub enum Progress {
    /// It finished (or failed) in this slice.
    Done(MessageOutcome),
    /// It used up its slice and continues in a later round.
    Paused(PausedExecution),
}

type CallFuture =
    Pin<Box<dyn Future<Output = (Store<HostState>, wasmtime::Result<()>, Vec<Val>)> + Send>>;

/// A message that ran out of its slice: its instance, stopped at a fuel
/// boundary, waits for the next round. It lives in the node's memory only;
/// a checkpoint or a restart starts the message again from the beginning,
/// which every replica does at the same rounds.
pub struct PausedExecution {
    execution: Execution,
    /// The committed state the message started from.
    state: ExecutionState,
    call: CallFuture,
    prepared: Prepared,
    limits: Limits,
    slices: u64,
}

// SAFETY: the armed memories' raw pointers refer to memories the store in
// `call` owns; both move together, and only the thread that polls the call
// (under an `ArmGuard`) touches them.
unsafe impl Send for PausedExecution {}

impl std::fmt::Debug for PausedExecution {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PausedExecution")
            .field("slices", &self.slices)
            .finish_non_exhaustive()
    }
}

impl PausedExecution {
    /// Slices executed so far.
    pub fn slices(&self) -> u64 {
        self.slices
    }

    /// Runs the next slice (at most `Limits::slice_instructions`).
    pub fn resume(mut self) -> Progress {
        self.slices += 1;
        let polled = {
            let _armed = ArmGuard::new(&mut self.prepared.tracked);
            self.call
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        };
        match polled {
            Poll::Pending => Progress::Paused(self),
            Poll::Ready((mut store, called, results)) => {
                let instruction_limit = self.execution.instruction_limit;
                let outcome = called
                    .map_err(|e| trap_reject(e, "execution", instruction_limit))
                    .and_then(|()| {
                        complete(
                            &mut store,
                            &self.state,
                            self.prepared,
                            results,
                            &self.limits,
                        )
                    });
                Progress::Done(self.execution.finish(store, outcome))
            }
        }
    }
}

/// Like [`execute`], for an update that may run longer than one slice: the
/// call yields every `limits.slice_instructions` instructions (counted, so
/// every replica pauses at the same point) and [`PausedExecution::resume`]
/// continues it in a later round.
pub fn execute_sliced(
    code: &CanisterCode,
    state: &ExecutionState,
    method: &Method,
    params: &[Val],
    ctx: MessageContext,
    limits: &Limits,
) -> Progress {
    let (execution, mut store) = Execution::new(code, state, ctx, limits);
    let prepared = match prepare(
        &mut store,
        code,
        state,
        method,
        execution.instruction_limit,
        limits,
    ) {
        Ok(p) => p,
        Err(reject) => return Progress::Done(execution.finish(store, Err(reject))),
    };
    if let Err(e) = store.fuel_async_yield_interval(Some(limits.slice_instructions.max(1))) {
        return Progress::Done(execution.finish(store, Err(host_error(e))));
    }
    let (func, instance, persists) = (prepared.func, prepared.instance, prepared.persists);
    let globals = code.globals;
    let params = params.to_vec();
    let results_len = method.results.len();
    let call: CallFuture = Box::pin(async move {
        let mut results = vec![Val::Bool(false); results_len];
        let called = async {
            if let Some(g) = globals {
                g.restore_async(&mut store, &instance).await?;
            }
            func.call_async(&mut store, &params, &mut results).await?;
            match globals {
                Some(g) if persists => g.save_async(&mut store, &instance).await,
                _ => Ok(()),
            }
        }
        .await;
        (store, called, results)
    });
    PausedExecution {
        execution,
        state: state.clone(),
        call,
        prepared,
        limits: limits.clone(),
        slices: 0,
    }
    .resume()
}

fn host_error(e: wasmtime::Error) -> Reject {
    Reject::new(RejectCode::CanisterError, format!("host error: {e:#}"))
}

/// Describes a failed instantiation or call.
fn trap_reject(error: wasmtime::Error, phase: &str, limit: u64) -> Reject {
    if error.downcast_ref::<Trap>() == Some(&Trap::OutOfFuel) {
        return Reject::new(
            RejectCode::CanisterError,
            format!("the canister ran out of instructions during {phase} (limit {limit})"),
        );
    }
    let message = match error.downcast_ref::<Trap>() {
        Some(trap) => format!("the canister trapped: {trap}"),
        // The outermost context is "error while executing at wasm
        // backtrace"; the root cause is what the caller needs.
        None => format!(
            "the canister trapped: {}",
            first_line(&error.root_cause().to_string())
        ),
    };
    Reject::new(RejectCode::CanisterError, with_handle_hint(message))
}

/// Explains the trap a guest gets when it uses a WASI resource handle (in
/// practice its stdout or stderr stream) that it cached in its persisted
/// memory during an earlier message: every message runs on a fresh
/// instance, whose handle table does not have it.
fn with_handle_hint(message: String) -> String {
    if !message.contains("unknown handle index") {
        return message;
    }
    format!(
        "{message} (a WASI handle, such as the stdout stream, kept from an earlier message: \
         every message runs on a fresh instance, so write to the canister's log with the \
         system API's log.write instead of stdout/stderr)"
    )
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or(text)
}

/// The last lines of stderr (where a Rust panic message lands).
fn stderr_tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(3);
    let tail = lines[start..].join(" | ");
    if tail.len() > 1000 {
        let mut cut = tail.len() - 1000;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail[cut..].to_string()
    } else {
        tail
    }
}

fn append_stream_logs(logs: &mut Vec<LogRecord>, bytes: &[u8], level: LogLevel, time: u64) {
    let text = String::from_utf8_lossy(bytes);
    for line in text.lines().filter(|l| !l.is_empty()) {
        logs.push(LogRecord {
            time_nanos: time,
            level,
            message: line.to_string(),
        });
    }
}

/// One instance kept alive across calls, without fresh instantiation,
/// heap mapping or rollback: the baseline that benchmarks compare the
/// per-message instance against. Not used to run canisters.
pub struct WarmInstance {
    store: Store<HostState>,
    instance: wasmtime::component::Instance,
}

impl WarmInstance {
    /// Instantiates `code` once with an empty state.
    pub fn new(code: &CanisterCode, ctx: MessageContext, limits: &Limits) -> anyhow::Result<Self> {
        let host = HostState {
            wasi: deterministic_wasi(
                ctx.time_nanos,
                ctx.random_seed,
                MemoryOutputPipe::new(4096),
                MemoryOutputPipe::new(4096),
            ),
            table: ResourceTable::new(),
            sys: SystemState {
                instruction_limit: u64::MAX,
                rejected: None,
                cycles_accepted: 0,
                stable: StableOverlay::new(Arc::default(), limits.max_stable_bytes),
                certified_data: None,
                timers: Default::default(),
                next_timer_id: 0,
                timers_changed: false,
                calls: Vec::new(),
                next_call_id: 0,
                cycles_reserved: 0,
                deferred: false,
                late_replies: Vec::new(),
                logs: Vec::new(),
                log_budget: 0,
                rand: TapeRng::new(ctx.random_seed),
                ctx,
            },
            limits: StoreLimitsBuilder::new().build(),
        };
        let mut store = Store::new(code.engine(), host);
        store
            .set_fuel(u64::MAX)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let (instance, _) = with_memory_plan(Vec::new(), || code.pre.instantiate(&mut store));
        let instance = instance.map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(WarmInstance { store, instance })
    }

    /// Calls `method` on the live instance.
    pub fn call(&mut self, method: &Method, params: &[Val]) -> anyhow::Result<Vec<Val>> {
        let func = self
            .instance
            .get_func(&mut self.store, method.index)
            .ok_or_else(|| anyhow::anyhow!("no such export"))?;
        let mut results = vec![Val::Bool(false); method.results.len()];
        func.call(&mut self.store, params, &mut results)
            .map_err(|e| anyhow::anyhow!("{e:#}"))?;
        Ok(results)
    }
}
