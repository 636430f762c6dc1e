//! The relay canister: inter-canister calls with `async` Rust and timers.

use cellar_sdk::State;
use cellar_sdk::calls::{self, CallError};
use cellar_sdk::wave::RawWave;

cellar_sdk::wit_bindgen::generate!({
    path: ["../../wit", "wit"],
    world: "example:relay/relay",
    runtime_path: "cellar_sdk::wit_bindgen::rt",
    features: ["clocks-timezone"],
    with: {
        "cellar:canister/message@0.1.0": cellar_sdk::sys::cellar::canister::message,
        "cellar:canister/calls@0.1.0": cellar_sdk::sys::cellar::canister::calls,
        "cellar:canister/timers@0.1.0": cellar_sdk::sys::cellar::canister::timers,
    },
});

use exports::cellar::canister::callbacks;
use exports::example::relay::{api, composite_query, query};

/// Timer firings.
static TICKS: State<u64> = State::new();
/// A counter composite queries change (the host discards their changes).
static SCRATCH: State<u64> = State::new();
/// Replies and rejects seen by calls.
static OUTCOMES: State<(u64, u64)> = State::new();

fn count<T>(result: &Result<T, CallError>) {
    OUTCOMES.with_mut(|(ok, err)| match result {
        Ok(_) => *ok += 1,
        Err(_) => *err += 1,
    });
}

struct Relay;

impl api::Guest for Relay {
    fn forward(callee: String, method: String, args: String) -> String {
        let reply = calls::defer_reply();
        calls::spawn(async move {
            let result = calls::call_raw(&callee, &method, &args, 0).await;
            count(&result);
            match result {
                Ok(RawWave(text)) => reply.reply(&text),
                Err(e) => reply.reject(&e.to_string()),
            }
        });
        String::new()
    }

    fn lookup(kv: String, key: String) -> Option<u64> {
        let reply = calls::defer_reply();
        calls::spawn(async move {
            let result = calls::call::<Option<u64>>(&kv, "get", (key,)).await;
            count(&result);
            match result {
                Ok(value) => reply.reply(&value),
                Err(e) => reply.reject(&e.to_string()),
            }
        });
        None
    }

    fn store_and_read(kv: String, key: String, value: u64) -> Option<u64> {
        let reply = calls::defer_reply();
        calls::spawn(async move {
            let stored = calls::call::<()>(&kv, "add", (key.as_str(), value)).await;
            count(&stored);
            if let Err(e) = stored {
                return reply.reject(&e.to_string());
            }
            let read = calls::call::<Option<u64>>(&kv, "get", (key,)).await;
            count(&read);
            match read {
                Ok(value) => reply.reply(&value),
                Err(e) => reply.reject(&e.to_string()),
            }
        });
        None
    }

    fn fan_out(callee: String, method: String, n: u32) -> u32 {
        let reply = calls::defer_reply();
        let pending: Vec<_> = (0..n)
            .map(|_| calls::call::<RawWave>(&callee, &method, ()))
            .collect();
        calls::spawn(async move {
            let mut replied = 0u32;
            for call in pending {
                let result = call.await;
                count(&result);
                replied += u32::from(result.is_ok());
            }
            reply.reply(&replied);
        });
        0
    }

    fn trap_in_callback(callee: String, method: String) -> String {
        let _reply = calls::defer_reply();
        calls::spawn(async move {
            let _ = calls::call::<RawWave>(&callee, &method, ()).await;
            panic!("trapping in the callback on purpose");
        });
        String::new()
    }

    fn start_timer(delay_nanos: u64, interval_nanos: Option<u64>) -> u64 {
        cellar_sdk::set_timer(delay_nanos, interval_nanos)
    }

    fn stop_timer(id: u64) -> bool {
        cellar_sdk::cancel_timer(id)
    }

    fn burn(iterations: u64) -> u64 {
        let mut x = 1u64;
        for i in 0..iterations {
            x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
        }
        x
    }
}

impl query::Guest for Relay {
    fn ticks() -> u64 {
        TICKS.with(|t| *t)
    }

    fn stats() -> (u64, u64, u32) {
        let (ok, err) = OUTCOMES.with(|o| *o);
        (ok, err, calls::pending_tasks() as u32)
    }

    fn spin(iterations: u64) -> u64 {
        <Relay as api::Guest>::burn(iterations)
    }

    fn fail(message: String) -> u64 {
        panic!("{message}")
    }
}

impl composite_query::Guest for Relay {
    fn forward_query(callee: String, method: String, args: String) -> String {
        let reply = calls::defer_reply();
        calls::spawn(async move {
            match calls::call_raw(&callee, &method, &args, 0).await {
                Ok(RawWave(text)) => reply.reply(&text),
                Err(e) => reply.reject(&e.to_string()),
            }
        });
        String::new()
    }

    fn probe(callee: String, method: String, args: String) -> (u64, String) {
        SCRATCH.with_mut(|s| *s += 1);
        let reply = calls::defer_reply();
        calls::spawn(async move {
            let result = calls::call_raw(&callee, &method, &args, 0).await;
            let scratch = SCRATCH.with_mut(|s| {
                *s += 1;
                *s
            });
            match result {
                Ok(RawWave(text)) => reply.reply(&(scratch, text)),
                Err(e) => reply.reject(&e.to_string()),
            }
        });
        (0, String::new())
    }

    fn chain(hops: Vec<String>) -> u32 {
        let Some((next, rest)) = hops.split_first() else {
            return 0;
        };
        let (next, rest) = (next.clone(), rest.to_vec());
        let reply = calls::defer_reply();
        calls::spawn(async move {
            match calls::call::<u32>(&next, "chain", (rest,)).await {
                Ok(n) => reply.reply(&(n + 1)),
                Err(e) => reply.reject(&e.to_string()),
            }
        });
        0
    }

    fn repeat(callee: String, method: String, args: String, n: u32) -> u32 {
        let reply = calls::defer_reply();
        calls::spawn(async move {
            let mut replied = 0u32;
            for _ in 0..n {
                replied += u32::from(calls::call_raw(&callee, &method, &args, 0).await.is_ok());
            }
            reply.reply(&replied);
        });
        0
    }
}

impl callbacks::Guest for Relay {
    fn on_reply(id: u64, result: calls::CallResult) {
        calls::handle_reply(id, result);
    }

    fn on_timer(_id: u64) {
        TICKS.with_mut(|t| *t += 1);
    }
}

export!(Relay);
