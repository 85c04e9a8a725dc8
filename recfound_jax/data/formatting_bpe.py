"""GritLM formats for a byte-level BPE tokenizer (Llama 3, Qwen2.5): whole strings, boundaries from offsets.

Such a tokenizer's pre-tokenizer joins a newline to the characters before it (Llama 3's regex makes
``|>\\n``, ``.\\n`` and ``|>\\n\\n`` single pre-tokens), so the pieces of a format encoded one by one are
not the whole string's tokens. Here every row is encoded as one string, exactly as GritLM's trainer
encodes it, and the boundaries come from the tokens' character offsets (`JsonTokenizer.encode_with_offsets`):

- embedding: ``{head}{text}`` with head ``<|user|>\\n{instruction}\\n<|embed|>\\n`` or ``<|embed|>\\n``;
  the prefix is BOS and the tokens that start before the text's first character.
- generative: each turn ``<|user|>\\n{prompt}\\n<|assistant|>\\n{answer}`` (``\\n<|user|>\\n...`` after an
  EOS) is one string; BOS and the EOS ids stand between them, as a tokenizer.json splits a string at
  its special tokens before anything else. Labels are on the tokens that start at or after the
  answer's first character, and on each EOS.

A token that starts before a boundary and ends after it (``|>\\n\\n`` before a text that starts with a
newline) goes to the prefix or prompt side, and the row is counted in ``TruncationStats.boundary_tokens``.

Truncation follows the SentencePiece path's rules (`recfound_jax.data.formatting`) on the whole string's
tokens: an embedding input keeps the first ``max_len`` tokens; when the prefix leaves no room for one text
token the instruction's tail is cut (characters, then the string is encoded again) or the instruction
dropped; a conversation drops its oldest turns (the new first turn is encoded again with the first
turn's ``<|user|>\\n``), then the last prompt's tokens are cut in their middle and the last answer's tail,
with `format_rules.prompt_keep`. Kept ids are therefore the whole string's tokens with a tail or a middle
run removed, as on the SentencePiece path, and never more than ``max_len``.
"""
from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Sequence
from typing import Protocol

from recfound_jax.data.format_rules import (
    ASSISTANT,
    EMBED,
    IGNORE_INDEX,
    INSTRUCTION_STRIP,
    USER,
    Ids,
    TruncationStats,
    cut_middle,
    prompt_keep,
    wrap_prompt,
)

Offsets = list[tuple[int, int]]
Encoded = tuple[Ids, Offsets]

USER_FIRST = f"{USER}\n"
USER_NEXT = f"\n{USER}\n"
ASSISTANT_TEXT = f"\n{ASSISTANT}\n"


class OffsetTokenizer(Protocol):
    """What this formatter needs of a tokenizer (`recfound_jax.tokenizer_json.JsonTokenizer` has it)."""

    bos_id: int
    eos_id: int

    def encode_with_offsets(self, text: str) -> Encoded: ...

    def encode_batch_with_offsets(self, texts: Sequence[str]) -> list[Encoded]: ...


@dataclasses.dataclass
class Turn:
    """One turn's tokens by where they start: the user marker, the prompt, the assistant marker, the answer."""

    head: Ids
    prompt: Ids
    marker: Ids
    answer: Ids  # EOS included
    straddles: bool  # a token spans the prompt/answer boundary

    def __len__(self) -> int:
        return len(self.head) + len(self.prompt) + len(self.marker) + len(self.answer)


def tokens_before(offsets: Offsets, position: int) -> int:
    """How many tokens start before character ``position`` (starts never decrease)."""
    return bisect.bisect_left([start for start, _ in offsets], position)


def straddles(offsets: Offsets, n_before: int, position: int) -> bool:
    """Whether the last of the ``n_before`` tokens that start before ``position`` ends after it."""
    return n_before > 0 and offsets[n_before - 1][1] > position


def embedding_head(instruction: str) -> str:
    """The text before an embedding input's text (the instruction already stripped)."""
    return f"{USER}\n{instruction}\n{EMBED}\n" if instruction else f"{EMBED}\n"


def turn_text(first: bool, prompt: str, answer: str) -> str:
    """One turn as it is encoded (the answer already stripped)."""
    return (USER_FIRST if first else USER_NEXT) + prompt + ASSISTANT_TEXT + answer


class WholeStringFormatter:
    """GritLM-format token ids from whole-string encodings (module docstring); `formatting.Formatter` uses it
    for a tokenizer whose pieces do not join into the whole string's tokens."""

    def __init__(self, tokenizer: OffsetTokenizer):
        self.tokenizer = tokenizer
        self.bos_id = tokenizer.bos_id
        self.eos_id = tokenizer.eos_id

    def _encode_unique(self, texts: Sequence[str]) -> list[Encoded]:
        """Each text's ids and offsets, encoding each distinct text once."""
        unique = list(dict.fromkeys(texts))
        table = dict(zip(unique, self.tokenizer.encode_batch_with_offsets(unique)))
        return [table[t] for t in texts]

    # ------------------------------------------------------------------ embedding

    def embedding_many(
        self, pairs: Sequence[tuple[str, str]], max_len: int | None = None, stats: TruncationStats | None = None
    ) -> list[tuple[Ids, int]]:
        """(ids, prefix_len) of each (instruction, text); ``ids[:prefix_len]`` is BOS and the prefix."""
        stats = stats if stats is not None else TruncationStats()
        instructions = [instr.strip(INSTRUCTION_STRIP) for instr, _ in pairs]
        encoded = self._encode_unique([embedding_head(i) + text for i, (_, text) in zip(instructions, pairs)])
        return [
            self._assemble_embedding(instruction, text, self._split_embedding(instruction, enc), max_len, stats)
            for instruction, (_, text), enc in zip(instructions, pairs, encoded)
        ]

    def format_embedding(
        self, instruction: str, text: str, max_len: int | None = None, stats: TruncationStats | None = None
    ) -> tuple[Ids, int]:
        """(ids, prefix_len) of one embedding input."""
        return self.embedding_many([(instruction, text)], max_len, stats)[0]

    def _split_embedding(self, instruction: str, encoded: Encoded) -> tuple[Ids, int, bool]:
        """(BOS + ids, prefix_len, whether a token spans the prefix/text boundary)."""
        ids, offsets = encoded
        head_len = len(embedding_head(instruction))
        n = tokens_before(offsets, head_len)
        return [self.bos_id] + ids, 1 + n, straddles(offsets, n, head_len)

    def _assemble_embedding(
        self, instruction: str, text: str, split: tuple[Ids, int, bool], max_len: int | None, stats: TruncationStats
    ) -> tuple[Ids, int]:
        stats.rows += 1
        ids, prefix_len, straddle = split
        full = len(ids)
        if max_len is not None and full > max_len:
            if prefix_len + 1 <= max_len:
                stats.text_cut += 1
            else:
                stats.instruction_cut += 1
                stats.text_cut += int(full - prefix_len > 1)
                ids, prefix_len, straddle = self._shortened(instruction, text, max_len)
            ids = ids[:max_len]
            stats.truncated += 1
            stats.tokens_removed += full - len(ids)
        stats.boundary_tokens += int(straddle)
        return ids, prefix_len

    def _shortened(self, instruction: str, text: str, max_len: int) -> tuple[Ids, int, bool]:
        """The row with the instruction's tail cut until BOS, the prefix and one text token fit, or, with no
        room for any instruction character, without the instruction."""
        start = len(USER_FIRST)
        cut = len(instruction)
        while cut > 0:
            ids, offsets = self.tokenizer.encode_with_offsets(embedding_head(instruction[:cut]) + text)
            split = self._split_embedding(instruction[:cut], (ids, offsets))
            excess = split[1] + 1 - max_len
            if excess <= 0:
                return split
            # Drop the characters of the last `excess` tokens that start inside the instruction; merges at
            # the new end may change, so encode again until it fits.
            inside = [s - start for s, _ in offsets if start <= s < start + cut]
            cut = min(cut - 1, inside[-excess] if excess <= len(inside) else 0)
        split = self._split_embedding("", self.tokenizer.encode_with_offsets(embedding_head("") + text))
        if split[1] + 1 > max_len:
            raise ValueError(f"max_len={max_len} is too short for BOS, '<|embed|>\\n' and one text token")
        return split

    # ------------------------------------------------------------------ generative

    def _turn(self, first: bool, prompt: str, answer: str, encoded: Encoded) -> Turn:
        ids, offsets = encoded
        head_end = len(USER_FIRST if first else USER_NEXT)
        prompt_end = head_end + len(prompt)
        answer_start = prompt_end + len(ASSISTANT_TEXT)
        a, b, c = (tokens_before(offsets, at) for at in (head_end, prompt_end, answer_start))
        return Turn(ids[:a], ids[a:b], ids[b:c], ids[c:] + [self.eos_id], straddles(offsets, c, answer_start))

    def generative_many(
        self,
        conversations: Sequence[Sequence[tuple[str, str]]],
        max_len: int | None = None,
        stats: TruncationStats | None = None,
    ) -> list[tuple[Ids, Ids]]:
        """(ids, labels) of each conversation of (prompt, answer) turns; labels are -100 off answers."""
        stats = stats if stats is not None else TruncationStats()
        stripped = [[(prompt, answer.strip()) for prompt, answer in turns] for turns in conversations]
        encoded = self._encode_unique([turn_text(k == 0, p, a) for turns in stripped for k, (p, a) in enumerate(turns)])
        out, i = [], 0
        for turns in stripped:
            pieces = [self._turn(k == 0, p, a, encoded[i + k]) for k, (p, a) in enumerate(turns)]
            i += len(turns)
            out.append(self._assemble_generative(turns, pieces, max_len, stats))
        return out

    def format_generative(
        self, turns: Sequence[tuple[str, str]], max_len: int | None = None, stats: TruncationStats | None = None
    ) -> tuple[Ids, Ids]:
        """(ids, labels) of one conversation."""
        return self.generative_many([turns], max_len, stats)[0]

    def _assemble_generative(
        self, turns: list[tuple[str, str]], pieces: list[Turn], max_len: int | None, stats: TruncationStats
    ) -> tuple[Ids, Ids]:
        stats.rows += 1
        full = 1 + sum(len(t) for t in pieces)
        if max_len is not None and full > max_len:
            pieces = self._fit_generative(turns, pieces, max_len, stats)
            stats.truncated += 1
            stats.tokens_removed += full - (1 + sum(len(t) for t in pieces))
        stats.boundary_tokens += int(any(t.straddles for t in pieces))
        ids, labels = [self.bos_id], [IGNORE_INDEX]
        for t in pieces:
            prompt_ids = t.head + t.prompt + t.marker
            ids += prompt_ids + t.answer
            labels += [IGNORE_INDEX] * len(prompt_ids) + t.answer
        return ids, labels

    def _fit_generative(
        self, turns: list[tuple[str, str]], pieces: list[Turn], max_len: int, stats: TruncationStats
    ) -> list[Turn]:
        """Drop the oldest turns, then share what is left between the last prompt and answer."""
        kept, kept_turns = list(pieces), list(turns)
        while len(kept) > 1 and 1 + sum(len(t) for t in kept) > max_len:
            kept.pop(0)
            kept_turns.pop(0)
            prompt, answer = kept_turns[0]  # now the first turn: "<|user|>\n" right after BOS
            encoded = self.tokenizer.encode_with_offsets(turn_text(True, prompt, answer))
            kept[0] = self._turn(True, prompt, answer, encoded)
        if len(kept) < len(pieces):
            stats.turns_dropped += 1
        over = 1 + sum(len(t) for t in kept) - max_len
        if over <= 0:
            return kept
        last = kept[-1]
        room = len(last.prompt) + len(last.answer) - over  # tokens left for this prompt and answer (EOS included)
        if room < 1:
            raise ValueError(f"max_len={max_len} leaves no room for an answer token")
        keep = prompt_keep(len(last.prompt), len(last.answer), room)
        if keep < len(last.prompt):
            stats.prompt_cut += 1
        if room - keep < len(last.answer):
            stats.answer_cut += 1
        last = dataclasses.replace(last, prompt=cut_middle(last.prompt, keep), answer=last.answer[: room - keep])
        return kept[:-1] + [last]

    # ------------------------------------------------------------------ prompts for decoding

    def generative_prompts(
        self, prompts: Sequence[str], max_len: int | None = None, stats: TruncationStats | None = None
    ) -> list[Ids]:
        """Ids of ``<s><|user|>\\n{prompt}\\n<|assistant|>\\n`` for each prompt, encoded whole; a prompt longer than
        ``max_len`` allows is cut in its middle."""
        stats = stats if stats is not None else TruncationStats()
        encoded = self._encode_unique([USER_FIRST + prompt + ASSISTANT_TEXT for prompt in prompts])
        out = []
        for prompt, (ids, offsets) in zip(prompts, encoded):
            a = tokens_before(offsets, len(USER_FIRST))
            b = tokens_before(offsets, len(USER_FIRST) + len(prompt))
            out.append(wrap_prompt([self.bos_id] + ids[:a], ids[a:b], ids[b:], max_len, stats))
        return out
