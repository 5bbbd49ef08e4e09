"""Input side: find the input files, fix one schema for their id and kept columns, stream
their rows in bounded blocks, and sort each row into "embed this text" or "reject, and here
is why".

    discovery   resolve_inputs, split_extension: files, globs, directories, stdin
    schema      resolve_schema, parse_column_types, schema_to_json: one schema per job
    read        read_file: dispatch to one reader per format
    delimited   CSV (RFC 4180) and TSV (quoted the same way, or not: --tsv-quoting), every value text
    boundaries  where CSV/TSV records start in bytes (quote-aware), for byte ranges
    jsonl       JSON lines, typed by the schema
    parquet     Parquet row groups, types passed through
    txt         one text per line
    streams     decompression, byte ranges, stdin, universal-newline line splitting
    values      does one value fit its column's type (else the bad row's reason)
    blocks      gathering a block of records into RawRows
    checks      check_rows, check_text, CheckedRows
    rows        InputFile, Columns, Split, RawRows, Reject

Nothing here holds a whole file, and every file-system access goes through
``minilm_cli.storage``.
"""

from __future__ import annotations

from .checks import CheckedRows, check_rows, check_text
from .discovery import COMPRESSIONS, EXTENSIONS, resolve_inputs, split_extension
from .read import read_file
from .rows import FORMATS, Columns, InputFile, RawRows, Reject, Split
from .schema import parse_column_types, resolve_schema, schema_to_json
from .streams import READ_BLOCK_BYTES, ByteRange, iter_lines

__all__ = [
    "COMPRESSIONS",
    "EXTENSIONS",
    "FORMATS",
    "READ_BLOCK_BYTES",
    "ByteRange",
    "CheckedRows",
    "Columns",
    "InputFile",
    "RawRows",
    "Reject",
    "Split",
    "check_rows",
    "check_text",
    "iter_lines",
    "parse_column_types",
    "read_file",
    "resolve_inputs",
    "resolve_schema",
    "schema_to_json",
    "split_extension",
]
