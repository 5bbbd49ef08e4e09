"""Where --overflow split/mean windows begin and end.

The rule, on the tokens of one text (no special tokens):

- A window begins at a word's first token and ends at a word's last token, "word" being the
  tokenizer's pre-tokenizer word (BERT: split at whitespace and at each punctuation mark, so
  ``author(s)`` is four words; a word's later WordPiece tokens start with ``##``). Then
  ``text[char_start:char_end]`` tokenizes to exactly the window's tokens. The one exception
  is a single word with more tokens than a window: it is cut after ``span`` tokens.
- A full window holds at most ``span`` tokens and ends at the last sentence end in its last
  quarter when there is one, else at its last word end. A sentence end is a token ``.``,
  ``!`` or ``?`` followed by whitespace, or any token followed by whitespace holding a line
  break.
- The next window begins at the first word start at most ``stride`` tokens before the end of
  the one before (so consecutive windows share at most --stride tokens, and fewer when a word
  straddles that point), and always after the start of the one before.
- The last window holds what is left, which always includes tokens no earlier window holds
  (a window is cut only when more than ``span`` tokens remain); a text without tokens is
  one empty window.
"""

from __future__ import annotations

from typing import Any

import numpy as np

# What each character is, looked up by code point (np.isin is far slower on every piece):
SPACE, LINE_BREAK, MARK = 1, 2, 4
KINDS = np.zeros(0x3002, dtype=np.uint8)  # str.isspace ends at U+3000; the last entry: "other"
for _code in range(0x3001):
    KINDS[_code] |= SPACE if chr(_code).isspace() else 0
for _char in "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029":
    KINDS[ord(_char)] |= LINE_BREAK
for _char in ".!?":
    KINDS[ord(_char)] |= MARK


def word_starts(encoding: Any) -> np.ndarray:
    """bool per token: it is the first token of a pre-tokenizer word (an encoding without
    special tokens; its first token always is)."""
    words = np.asarray(encoding.word_ids, dtype=np.int64)
    return np.concatenate(([True], words[1:] != words[:-1])) if len(words) else np.zeros(0, bool)


def sentence_ends(text: str, offsets: np.ndarray, next_start: int) -> np.ndarray:
    """bool per token (``offsets``: absolute (start, end) of consecutive tokens of ``text``):
    a window may end here as at a sentence end. ``next_start`` is where the token after the
    last one begins (the end of ``text`` when none follows)."""
    if not len(offsets):
        return np.zeros(0, dtype=bool)
    base = int(offsets[0, 0])
    codes = np.frombuffer(text[base:next_start].encode("utf-32-le", "surrogatepass"), dtype="<u4")
    kinds = np.append(KINDS[np.minimum(codes, len(KINDS) - 1)], 0)  # and "nothing" past the end
    starts, ends = offsets[:, 0] - base, offsets[:, 1] - base
    following = np.append(starts[1:], len(codes))  # where the next token begins
    space_after = (ends < following) & ((kinds[ends] & SPACE) > 0)
    mark = (ends - starts == 1) & ((kinds[starts] & MARK) > 0)
    breaks = np.concatenate(([0], np.cumsum((kinds[:-1] & LINE_BREAK) > 0)))
    return space_after & (mark | (breaks[following] > breaks[ends]))


def window_end(starts: np.ndarray, ends: np.ndarray, span: int) -> int:
    """Tokens in the window that begins at token 0 of a buffer of more than ``span`` tokens
    (``starts``: word starts, ``ends``: sentence ends, as above)."""
    quarter = span // 4
    if quarter:  # the latest sentence end in the last quarter, at a word end
        lo = span - quarter + 1  # the window's last token at span - quarter or later
        at = np.flatnonzero(ends[lo - 1 : span] & starts[lo : span + 1])
        if len(at):
            return lo + int(at[-1])
    word_ends = np.flatnonzero(starts[1 : span + 1])
    return 1 + int(word_ends[-1]) if len(word_ends) else span  # no word end: one long word


def next_start(starts: np.ndarray, end: int, stride: int) -> int:
    """Where the window after one of ``end`` tokens (begun at token 0) begins."""
    lo = max(1, end - stride)
    at = np.flatnonzero(starts[lo : end + 1])
    return lo + int(at[0]) if len(at) else lo
