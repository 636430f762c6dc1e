"""The key-value store canister in Python: a dict that simply lives in memory.

componentize-py turns this module into a component whose world is `kv` in
`wit/world.wit` (the same `example:kv` interfaces as the Rust example in
`components/kv`, plus the system API's `log`). The class names follow the
exported interfaces: `Api` holds the update `add`, `Query` holds the query
`get` (the host treats an exported interface named `query` as queries).

The dict is a module-level global: the node keeps the component's linear
memory between messages, so the Python heap, and this dict in it, persists.

`print()` writes to the canister's log (`cellar logs`): `sys.stdout` and
`sys.stderr` are replaced by `LogStream`s, which send each line to the
system API's `log.write`. Writing to WASI stdout instead would fail from
the second message on: every message runs on a fresh instance, and the
stdout stream handle that the C library caches in (persisted) linear memory
during the first message does not exist in the next one.
"""

import sys
from typing import Optional

from wit_world import exports
from wit_world.imports import log


class LogStream:
    """A text stream whose lines go to the canister's log at one level.

    Text is buffered until a newline (or `flush()`), so `print("a", "b")`
    gives one record. The buffer lives in the heap like any other state: a
    line left unfinished by a message that succeeds is completed by a later
    one."""

    def __init__(self, level: log.Level) -> None:
        self.level = level
        self.pending = ""

    def write(self, text: str) -> int:
        """Buffers `text` and logs every line it completes."""
        *lines, self.pending = (self.pending + text).split("\n")
        for line in lines:
            log.write(self.level, line)
        return len(text)

    def flush(self) -> None:
        """Logs the unfinished line, if any."""
        if self.pending:
            log.write(self.level, self.pending)
            self.pending = ""

    def isatty(self) -> bool:
        return False

    def writable(self) -> bool:
        return True


# Runs when componentize-py pre-initializes the module (at build time), so
# the streams are in place before the first message.
sys.stdout = LogStream(log.Level.INFO)
sys.stderr = LogStream(log.Level.ERROR)

STORE: dict[str, int] = {}


class Api(exports.Api):
    def add(self, key: str, value: int) -> None:
        """Stores `value` under `key`, replacing any previous value."""
        STORE[key] = value
        print(f"add {key} = {value}")


class Query(exports.Query):
    def get(self, key: str) -> Optional[int]:
        """The value stored under `key`, if any."""
        return STORE.get(key)
