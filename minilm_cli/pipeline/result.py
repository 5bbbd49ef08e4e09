"""What a run did: the summary line and the manifest's totals."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from .mean import MergedTokens


@dataclass
class JobResult:
    """Counts of one run (or, after --resume, of the whole output so far)."""

    rows: int = 0
    embedded: int = 0  # rows that went through the model (fewer than rows when texts repeat)
    reused: int = 0  # rows whose vector is a --reuse output's
    rejected: int = 0
    truncated: int = 0
    shards: int = 0
    tokens: int = 0
    padded_tokens: int = 0
    seconds: float = 0.0
    resumed_rows: int = 0
    stage_seconds: dict[str, float] = field(default_factory=dict)
    output: str = ""
    overflow: str = "truncate"
    windows: int = 0  # window rows of this run (split, mean), a copy of a repeated window included
    documents: int = 0  # documents those windows came from (split)

    def add_shards(self, shards: list[dict[str, Any]]) -> None:
        """Count finished shards as the manifest lists them."""
        for shard in shards:
            self.rows += shard["rows"]
            self.embedded += shard.get("embedded", shard["rows"])
            self.reused += shard.get("reused", 0)
            self.rejected += shard["rejected"]
            self.truncated += shard["truncated"]
            self.tokens += shard["tokens"]
            self.padded_tokens += shard["padded_tokens"]
            self.shards += 1

    def add_chunk(self, chunk: Any) -> None:
        """Count an embedded chunk (its rows, rejects and tokens)."""
        self.rows += len(chunk)
        self.embedded += chunk.tokens.model_rows if chunk.tokens is not None else 0
        self.reused += chunk.dedup.reused_rows if chunk.dedup is not None else 0
        self.rejected += len(chunk.rejects)
        self.truncated += chunk.truncated_rows
        if self.overflow == "split" and len(chunk):
            self.documents += int((chunk.keep.column("window").to_numpy() == 0).sum())
        self.windows += _window_rows(self.overflow, chunk)
        if chunk.tokens is not None:
            self.tokens += chunk.tokens.real_tokens
            self.padded_tokens += chunk.tokens.padded_tokens

    @property
    def padding_efficiency(self) -> float:
        return self.tokens / self.padded_tokens if self.padded_tokens else 1.0

    @property
    def rows_per_second(self) -> float:
        new_rows = self.rows - self.resumed_rows
        return new_rows / self.seconds if self.seconds > 0 else 0.0

    def totals(self) -> dict[str, Any]:
        out = asdict(self)
        out["padding_efficiency"] = round(self.padding_efficiency, 4)
        out["rows_per_second"] = round(self.rows_per_second, 2)
        out["seconds"] = round(self.seconds, 3)
        return out

    def holdings(self) -> str:
        """What OUTPUT holds, for a run that had nothing to do (its earlier runs' rejected,
        truncated, speed and padding figures are not this run's, so they are not shown)."""
        return f"added 0 rows; {self.output} holds {_rows(self.rows)} in {self.shards} shard(s)"

    def summary(self) -> str:
        shards = "" if self.output == "-" else f" into {self.shards} shard(s)"
        padding = f", padding efficiency {self.padding_efficiency:.0%}" if self.padded_tokens else ""
        if self.overflow == "split":
            what = f"{_rows(self.rows)} ({self.windows} windows of {self.documents} documents)"
        elif self.overflow == "mean":
            what = f"{_rows(self.rows)} ({self.windows} windows)"
        else:
            what = _rows(self.rows)
        copied = self.rows - self.embedded if self.overflow in ("truncate", "reject") else 0
        reused = ""
        if copied > 0:
            reused = f"; {_rows(copied)} copied an earlier vector (repeated text or --reuse)"
        lead = f"embedded {what}{shards}"
        if self.resumed_rows and self.output != "-":  # --resume, --append: say what this run added
            added = self.rows - self.resumed_rows
            lead = f"added {_rows(added)}; {self.output} holds {what} in {self.shards} shard(s)"
        return (
            f"{lead}; {self.rejected} rejected, {self.truncated} truncated; "
            f"{self.seconds:.1f} s, {self.rows_per_second:.0f} rows/s{padding}{reused}"
        )


def _rows(n: int) -> str:
    return "1 row" if n == 1 else f"{n} rows"


def _window_rows(overflow: str, chunk: Any) -> int:
    """Window rows behind a chunk: under split each row is one; under mean its documents'
    windows. Dedup copies count, as rows do: ``embedded`` counts what the model ran."""
    if overflow == "split":
        return len(chunk)
    if overflow == "mean" and isinstance(chunk.tokens, MergedTokens):
        return chunk.tokens.window_rows
    return 0
