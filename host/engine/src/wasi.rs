//! A WASI context with no ambient authority and no nondeterminism.
//!
//! Both clocks read the round's time, randomness comes from the round's
//! tape (`rng`) and the insecure seed is pinned; there is no filesystem,
//! environment or network.

use std::time::Duration;

use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use crate::rng::{TapeRng, derive_seed};

/// Both WASI clocks read the round's time.
struct RoundClock(u64);

impl HostWallClock for RoundClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.0)
    }
}

impl HostMonotonicClock for RoundClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.0
    }
}

/// Builds the WASI context of one message: clocks at the round's time,
/// randomness from the message's tape, stdout/stderr into the given pipes,
/// closed stdin, no environment, arguments, preopened directories or network.
pub(crate) fn deterministic_wasi(
    time_nanos: u64,
    seed: [u8; 32],
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
) -> WasiCtx {
    let insecure_seed = derive_seed("wasi-insecure-seed", &[&seed]);
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(stdout)
        .stderr(stderr)
        .wall_clock(RoundClock(time_nanos))
        .monotonic_clock(RoundClock(time_nanos))
        .secure_random(TapeRng::new(derive_seed("wasi-secure", &[&seed])))
        .insecure_random(TapeRng::new(derive_seed("wasi-insecure", &[&seed])))
        .insecure_random_seed(u128::from_le_bytes(
            insecure_seed[..16].try_into().expect("16 bytes"),
        ))
        .allow_ip_name_lookup(false)
        .allow_tcp(false)
        .allow_udp(false);
    builder.build()
}
