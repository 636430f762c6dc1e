//! The host side of the `cellar:canister` system API.
//!
//! [`HostState`] is the data of a message's store: the WASI context and the
//! message's [`SystemState`], which records everything the message asks of
//! the system (reject, stable writes, certified data, timers, log records).
//! Nothing it records reaches the committed state unless the message commits.

use std::collections::BTreeMap;

use cellar_types::Principal;
use wasmtime::AsContext;
use wasmtime::component::{Access, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::message_context::{LogLevel, LogRecord, MessageContext, MessageKind};
use crate::rng::TapeRng;
use crate::stable::StableOverlay;
use crate::state::{LateReply, OutgoingCall, Timer};

wasmtime::component::bindgen!({
    path: "../../wit",
    world: "cellar:canister/system-api",
    imports: {
        "cellar:canister/info.instruction-counter": store,
        "cellar:canister/stable-memory.read": trappable,
        "cellar:canister/stable-memory.write": trappable,
    },
});

use cellar::canister::{
    calls, certified_data, info, log, message, randomness, stable_memory, timers,
};

/// Calls one message may make.
pub const MAX_CALLS_PER_MESSAGE: usize = 500;

/// Bytes of WAVE arguments one call may carry.
pub const MAX_CALL_ARGUMENT_BYTES: usize = 2 << 20;

/// What one message did to the system, pending commit.
pub(crate) struct SystemState {
    pub(crate) ctx: MessageContext,
    pub(crate) instruction_limit: u64,
    pub(crate) rejected: Option<String>,
    pub(crate) cycles_accepted: u64,
    pub(crate) stable: StableOverlay,
    pub(crate) certified_data: Option<Vec<u8>>,
    pub(crate) timers: BTreeMap<u64, Timer>,
    pub(crate) next_timer_id: u64,
    pub(crate) timers_changed: bool,
    pub(crate) calls: Vec<OutgoingCall>,
    pub(crate) next_call_id: u64,
    pub(crate) cycles_reserved: u64,
    pub(crate) deferred: bool,
    pub(crate) late_replies: Vec<LateReply>,
    pub(crate) logs: Vec<LogRecord>,
    pub(crate) log_budget: usize,
    pub(crate) rand: TapeRng,
}

impl SystemState {
    fn append_log(&mut self, level: LogLevel, message: String) {
        if self.log_budget == 0 {
            return;
        }
        let mut message = message;
        if message.len() > self.log_budget {
            let mut cut = self.log_budget;
            while !message.is_char_boundary(cut) {
                cut -= 1;
            }
            message.truncate(cut);
            message.push_str(" [log limit reached]");
            self.log_budget = 0;
        } else {
            self.log_budget -= message.len();
        }
        self.logs.push(LogRecord {
            time_nanos: self.ctx.time_nanos,
            level,
            message,
        });
    }
}

/// The data of a message's store.
pub(crate) struct HostState {
    pub(crate) wasi: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) sys: SystemState,
    pub(crate) limits: wasmtime::StoreLimits,
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

/// Adds the system API and WASI 0.2 to a linker.
pub(crate) fn add_to_linker(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    SystemApi::add_to_linker::<HostState, HasSelf<HostState>>(linker, |state| state)
}

impl message::Host for HostState {
    fn caller(&mut self) -> String {
        self.sys.ctx.caller.to_text()
    }

    fn method_name(&mut self) -> String {
        self.sys.ctx.method.clone()
    }

    fn cycles_attached(&mut self) -> u64 {
        self.sys.ctx.cycles_attached - self.sys.cycles_accepted
    }

    fn accept_cycles(&mut self, amount: u64) -> u64 {
        let available = self.sys.ctx.cycles_attached - self.sys.cycles_accepted;
        let accepted = amount.min(available);
        self.sys.cycles_accepted += accepted;
        accepted
    }

    fn reject(&mut self, message: String) {
        self.sys.rejected.get_or_insert(message);
    }

    fn defer_reply(&mut self) -> Result<u64, String> {
        if !matches!(
            self.sys.ctx.kind,
            MessageKind::Update | MessageKind::CompositeQuery
        ) {
            return Err("only updates and composite queries can defer their reply".into());
        }
        self.sys.deferred = true;
        Ok(self.sys.ctx.context_id)
    }

    fn reply_to(&mut self, token: u64, value: String) -> Result<(), String> {
        self.answer(token, Ok(value))
    }

    fn reject_to(&mut self, token: u64, message: String) -> Result<(), String> {
        self.answer(token, Err(message))
    }
}

impl HostState {
    /// Records the answer to a deferred message, once per token.
    fn answer(&mut self, token: u64, answer: Result<String, String>) -> Result<(), String> {
        if self.sys.ctx.kind == MessageKind::Query {
            return Err("queries cannot answer deferred messages".into());
        }
        let open = self.sys.ctx.open_contexts.contains(&token)
            || (self.sys.deferred && token == self.sys.ctx.context_id);
        if !open {
            return Err(format!("no deferred message waits for reply token {token}"));
        }
        if self.sys.late_replies.iter().any(|r| r.token == token) {
            return Err(format!("deferred message {token} was already answered"));
        }
        self.sys.late_replies.push(LateReply { token, answer });
        Ok(())
    }
}

impl info::Host for HostState {
    fn self_id(&mut self) -> String {
        self.sys.ctx.canister_id.to_text()
    }

    fn time(&mut self) -> u64 {
        self.sys.ctx.time_nanos
    }

    fn round(&mut self) -> u64 {
        self.sys.ctx.round
    }

    fn cycle_balance(&mut self) -> u64 {
        self.sys.ctx.cycle_balance + self.sys.cycles_accepted
    }

    fn controllers(&mut self) -> Vec<String> {
        self.sys
            .ctx
            .controllers
            .iter()
            .map(|c| c.to_text())
            .collect()
    }
}

impl info::HostWithStore<HostState> for HasSelf<HostState> {
    fn instruction_counter(mut host: Access<'_, HostState, Self>) -> u64 {
        let limit = host.data_mut().sys.instruction_limit;
        let left = host.as_context().get_fuel().unwrap_or(0);
        limit.saturating_sub(left)
    }
}

impl calls::Host for HostState {
    fn call(
        &mut self,
        callee: String,
        method: String,
        args: String,
        cycles: u64,
    ) -> Result<u64, String> {
        match self.sys.ctx.kind {
            MessageKind::Query => {
                return Err("queries cannot make calls; composite queries (exported \
                            interface `composite-query`) can call query methods"
                    .into());
            }
            MessageKind::CompositeQuery if cycles > 0 => {
                return Err("composite queries cannot attach cycles to calls".into());
            }
            _ => {}
        }
        let callee = Principal::from_text(&callee)
            .map_err(|e| format!("cannot call {method}: bad callee {callee:?}: {e}"))?;
        if self.sys.calls.len() >= MAX_CALLS_PER_MESSAGE {
            return Err(format!(
                "a message can make at most {MAX_CALLS_PER_MESSAGE} calls"
            ));
        }
        if args.len() > MAX_CALL_ARGUMENT_BYTES {
            return Err(format!(
                "call arguments are {} bytes; the limit is {MAX_CALL_ARGUMENT_BYTES}",
                args.len()
            ));
        }
        let available = self
            .sys
            .ctx
            .cycle_balance
            .saturating_add(self.sys.cycles_accepted)
            .saturating_sub(self.sys.cycles_reserved);
        if cycles > available {
            return Err(format!(
                "cannot attach {cycles} cycles: the balance left is {available}"
            ));
        }
        self.sys.cycles_reserved += cycles;
        let call_id = self.sys.next_call_id;
        self.sys.next_call_id += 1;
        self.sys.calls.push(OutgoingCall {
            call_id,
            callee,
            method,
            args,
            cycles,
        });
        Ok(call_id)
    }
}

impl stable_memory::Host for HostState {
    fn size(&mut self) -> u64 {
        self.sys.stable.size()
    }

    fn grow(&mut self, new_pages: u64) -> Result<u64, String> {
        self.sys.stable.grow(new_pages)
    }

    fn read(&mut self, offset: u64, length: u64) -> wasmtime::Result<Vec<u8>> {
        self.sys
            .stable
            .read(offset, length)
            .map_err(|e| wasmtime::format_err!("{e}"))
    }

    fn write(&mut self, offset: u64, data: Vec<u8>) -> wasmtime::Result<()> {
        self.sys
            .stable
            .write(offset, &data)
            .map_err(|e| wasmtime::format_err!("{e}"))
    }
}

impl certified_data::Host for HostState {
    fn set(&mut self, data: Vec<u8>) -> Result<(), String> {
        if matches!(
            self.sys.ctx.kind,
            MessageKind::Query | MessageKind::CompositeQuery
        ) {
            return Err("certified data cannot be set from a query".into());
        }
        if data.len() > 32 {
            return Err(format!(
                "certified data is at most 32 bytes, got {}",
                data.len()
            ));
        }
        self.sys.certified_data = Some(data);
        Ok(())
    }

    fn get(&mut self) -> Vec<u8> {
        self.sys
            .certified_data
            .clone()
            .unwrap_or_else(|| self.sys.ctx.certified_data.clone())
    }
}

impl log::Host for HostState {
    fn write(&mut self, level: log::Level, message: String) {
        let level = match level {
            log::Level::Debug => LogLevel::Debug,
            log::Level::Info => LogLevel::Info,
            log::Level::Warn => LogLevel::Warn,
            log::Level::Error => LogLevel::Error,
        };
        self.sys.append_log(level, message);
    }
}

impl randomness::Host for HostState {
    fn raw_rand(&mut self) -> Vec<u8> {
        let mut out = vec![0; 32];
        self.sys.rand.fill(&mut out);
        out
    }
}

impl timers::Host for HostState {
    fn set_timer(&mut self, delay_nanos: u64, interval_nanos: Option<u64>) -> u64 {
        let id = self.sys.next_timer_id;
        self.sys.next_timer_id += 1;
        self.sys.timers.insert(
            id,
            Timer {
                at_nanos: self.sys.ctx.time_nanos.saturating_add(delay_nanos),
                interval_nanos: interval_nanos.filter(|i| *i > 0),
            },
        );
        self.sys.timers_changed = true;
        id
    }

    fn cancel_timer(&mut self, id: u64) -> bool {
        let removed = self.sys.timers.remove(&id).is_some();
        self.sys.timers_changed |= removed;
        removed
    }
}
