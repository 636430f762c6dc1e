// The key-value store canister in JavaScript: a Map that simply lives in memory.
//
// componentize-js turns this module into a component whose world is `kv` in
// `wit/world.wit` (the same `example:kv` interfaces as the Rust example in
// `components/kv`). Each exported interface is an exported object named after
// it: `api` holds the update `add`, `query` holds the query `get` (the host
// treats an exported interface named `query` as queries).
//
// The Map is a module-level global: the node keeps the component's linear
// memory between messages, so the JavaScript heap, and this Map in it,
// persists. WIT `u64` values are BigInts; `option<u64>` is the value or
// `undefined`.

const store = new Map();

export const api = {
  /** Stores `value` under `key`, replacing any previous value. */
  add(key, value) {
    store.set(key, value);
  },
};

export const query = {
  /** The value stored under `key`, if any. */
  get(key) {
    return store.get(key);
  },
};
