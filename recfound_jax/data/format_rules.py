"""What both GritLM formatters share: the format's markers, the label mask value, truncation counts and rules.

`recfound_jax.data.formatting` (piece by piece, SentencePiece-style tokenizers) and
`recfound_jax.data.formatting_bpe` (whole strings, byte-level BPE) build the same layout and cut
rows by the same rules; the rules that work on token counts alone live here so that both follow them.
"""
from __future__ import annotations

import dataclasses

INSTRUCTION_STRIP = "\t\n :"
USER = "<|user|>"
EMBED = "<|embed|>"
ASSISTANT = "<|assistant|>"
IGNORE_INDEX = -100

Ids = list[int]


@dataclasses.dataclass
class TruncationStats:
    """How many rows were cut, and how."""

    rows: int = 0
    truncated: int = 0  # rows with any cut
    text_cut: int = 0  # embedding: the text's tail
    instruction_cut: int = 0  # embedding: the instruction cut or dropped
    turns_dropped: int = 0  # generative: rows that lost earlier turns
    prompt_cut: int = 0  # generative: the last prompt cut in its middle
    answer_cut: int = 0  # generative: the last answer's tail
    tokens_removed: int = 0
    # Whole-string (byte-level BPE) rows where one token spans the prefix/text or a prompt/answer boundary; that
    # token counts as prefix/prompt. Never counted on the SentencePiece path, where a newline ends every token.
    boundary_tokens: int = 0

    def merge(self, other: TruncationStats) -> None:
        """Add ``other``'s counts to these."""
        for f in dataclasses.fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def to_dict(self) -> dict[str, int]:
        """The counts by name."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, int]) -> TruncationStats:
        """Counts from :meth:`to_dict` (a count missing from an older cache is 0)."""
        return cls(**d)


def prompt_keep(prompt_len: int, answer_len: int, room: int) -> int:
    """How many of a last prompt's tokens stay when it and its answer (EOS included) share ``room`` tokens:
    the whole answer if the prompt can give way, else at least half of the room for the prompt."""
    return min(prompt_len, max(room - answer_len, room // 2))


def cut_middle(ids: Ids, keep: int) -> Ids:
    """``ids`` cut to ``keep`` tokens in its middle: its head (an instruction) and its tail (options and
    "Response:") stay, ``keep // 2`` tokens of the head."""
    if keep >= len(ids):
        return list(ids)
    head = keep // 2
    return ids[:head] + ids[len(ids) - (keep - head):]


def wrap_prompt(head: Ids, prompt: Ids, tail: Ids, max_len: int | None, stats: TruncationStats) -> Ids:
    """``head + prompt + tail``, the prompt cut in its middle when the whole is longer than ``max_len``."""
    stats.rows += 1
    room = len(prompt) if max_len is None else max_len - len(head) - len(tail)
    if room < 1:
        raise ValueError(f"max_len={max_len} leaves no room for a prompt token")
    if room < len(prompt):
        stats.truncated += 1
        stats.prompt_cut += 1
        stats.tokens_removed += len(prompt) - room
        prompt = cut_middle(prompt, room)
    return list(head) + prompt + list(tail)
