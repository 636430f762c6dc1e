// The key-value store canister in JavaScript: a Map that simply lives in memory.
//
// componentize-js turns this module into a component whose world is `kv` in
// `wit/world.wit` (the same `example:kv` interfaces as the Rust example in
// `components/kv`, plus the system API's `log`). Each exported interface is
// an exported object named after it: `api` holds the update `add`, `query`
// holds the query `get` (the host treats an exported interface named `query`
// as queries).
//
// The Map is a module-level global: the node keeps the component's linear
// memory between messages, so the JavaScript heap, and this Map in it,
// persists. WIT `u64` values are BigInts; `option<u64>` is the value or
// `undefined`.
//
// `console.log` and friends write to the canister's log (`cellar logs`)
// through the system API's `log.write`. The runtime's own console writes to
// WASI stdout, which fails from the second message on: every message runs
// on a fresh instance, and the stdout stream handle cached in (persisted)
// linear memory during the first message does not exist in the next one.

import { write } from 'cellar:canister/log@0.1.0';

/** One console argument as text: strings as they are, the rest as JSON where possible. */
function show(value) {
  if (typeof value === 'string') return value;
  if (value instanceof Error) return `${value.name}: ${value.message}`;
  if (value !== null && typeof value === 'object') {
    try {
      return JSON.stringify(value, (_, v) => (typeof v === 'bigint' ? `${v}n` : v));
    } catch {
      // Cycles and the like: fall back to String().
    }
  }
  return String(value);
}

/** A console method that logs its arguments, space-separated, at `level`. */
function logAt(level) {
  return (...args) => write(level, args.map(show).join(' '));
}

// Runs when componentize-js pre-initializes the module (at build time), so
// the console is in place before the first message.
globalThis.console = {
  log: logAt('info'),
  info: logAt('info'),
  debug: logAt('debug'),
  warn: logAt('warn'),
  error: logAt('error'),
};

const store = new Map();

export const api = {
  /** Stores `value` under `key`, replacing any previous value. */
  add(key, value) {
    store.set(key, value);
    console.log(`add ${key} = ${value}`);
  },
};

export const query = {
  /** The value stored under `key`, if any. */
  get(key) {
    return store.get(key);
  },
};
