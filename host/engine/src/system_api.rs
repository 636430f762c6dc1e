//! The host side of the `cellar:canister` system API.
//!
//! [`HostState`] is the data of a message's store: the WASI context and the
//! message's [`SystemState`], which records everything the message asks of
//! the system (reject, stable writes, certified data, timers, log records).
//! Nothing it records reaches the committed state unless the message commits.

use std::collections::BTreeMap;

use wasmtime::AsContext;
use wasmtime::component::{Access, HasSelf, Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use crate::exec::{LogLevel, LogRecord, MessageContext, MessageKind};
use crate::rng::TapeRng;
use crate::stable::StableOverlay;
use crate::state::Timer;

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
        _args: String,
        _cycles: u64,
    ) -> Result<u64, String> {
        Err(format!(
            "cannot call {method} on {callee}: inter-canister calls are not executed by this node \
             version yet (they arrive with the round scheduler)"
        ))
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
        if self.sys.ctx.kind == MessageKind::Query {
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
