"""The key-value store canister in Python: a dict that simply lives in memory.

componentize-py turns this module into a component whose world is `kv` in
`wit/world.wit` (the same `example:kv` interfaces as the Rust example in
`components/kv`). The class names follow the exported interfaces: `Api`
holds the update `add`, `Query` holds the query `get` (the host treats an
exported interface named `query` as queries).

The dict is a module-level global: the node keeps the component's linear
memory between messages, so the Python heap, and this dict in it, persists.
"""

from typing import Optional

from wit_world import exports

STORE: dict[str, int] = {}


class Api(exports.Api):
    def add(self, key: str, value: int) -> None:
        """Stores `value` under `key`, replacing any previous value."""
        STORE[key] = value


class Query(exports.Query):
    def get(self, key: str) -> Optional[int]:
        """The value stored under `key`, if any."""
        return STORE.get(key)
