"""The output side: where embeddings land, and how a reader knows they are all there.

  layout.py   names in OUTPUT: shard files, per-part prefixes, manifest, lock, markers
  writers.py  ShardWriter (parquet / npy + rejects, committed whole), JsonLinesWriter (-o -)
  manifest.py the manifest: a header plus one commit marker per shard, compacted at the end
  outdir.py   one writer's rules: lock, --overwrite, --resume clean-up and damage checks
  session.py  OutputSession: all of the above for one writer, driven by the pipeline
  generations.py, array_append.py  --append: generations, alone or in every part of a job array
  merge.py    finished_files, open_dataset, merge-manifests
  keyindex.py KeyIndex: the sorted key files of many shards, searchable in bounded memory
  verify.py   `minilm verify`; verify_keys.py: key files and reused rows; ids.py: repeated ids

Every file-system step goes through minilm_cli.storage.
"""

from __future__ import annotations

from .ids import count_duplicate_ids
from .layout import Layout, manifest_name, shard_prefix
from .manifest import FORMAT_VERSION, Manifest, find_manifests
from .merge import finished_files, merge_manifests, open_dataset
from .session import OutputSession, ResumePoint
from .verify import VerifyReport, verify_output
from .writers import FileRecord, JsonLinesWriter, ShardRecord, ShardWriter

__all__ = [
    "FORMAT_VERSION",
    "FileRecord",
    "JsonLinesWriter",
    "Layout",
    "Manifest",
    "OutputSession",
    "ResumePoint",
    "ShardRecord",
    "ShardWriter",
    "VerifyReport",
    "count_duplicate_ids",
    "find_manifests",
    "finished_files",
    "manifest_name",
    "merge_manifests",
    "open_dataset",
    "shard_prefix",
    "verify_output",
]
