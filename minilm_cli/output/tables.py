"""Reading a whole shard table back (verify, the duplicate-id count), without leaving work behind.

``pq.read_table`` on a Python file object goes through Arrow's asynchronous dataset scanner:
its read-ahead futures live on Arrow's I/O and CPU pools, and the last reference to the
file's buffers (which wrap Python objects) can be dropped by a pool thread after the call
has returned. If the interpreter is exiting by then, that thread's GIL request ends it
inside a C++ destructor and the process aborts (`terminate called without an active
exception`, exit 134) after the command has printed its result. So shards are read here
synchronously on the calling thread, and the file is closed before the table is returned.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from ..storage import Storage


def read_table(storage: Storage, path: str, columns: Sequence[str] | None = None) -> pa.Table:
    """The Parquet file at ``path`` (or its ``columns``), read on this thread only."""
    with storage.open_read(path) as f:
        reader = pq.ParquetFile(f, pre_buffer=False)
        try:
            return reader.read(columns=list(columns) if columns is not None else None, use_threads=False)
        finally:
            reader.close()
