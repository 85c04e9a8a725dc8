"""GritLM prompt formats, tokenization with exact prefix lengths, labels, truncation, tokenized tables.

Formats (docs/method.md, "Formats"; plain text, nothing added to the vocabulary; ``<s>``/``</s>``
are the BOS/EOS ids, never text):

- embedding: ``<s><|user|>\\n{instruction stripped of "\\t\\n :"}\\n<|embed|>\\n{text}``, or
  ``<s><|embed|>\\n{text}`` when the stripped instruction is empty. Everything up to and including
  ``<|embed|>\\n`` is the prefix, excluded from mean pooling.
- generative: ``<s><|user|>\\n{p1}\\n<|assistant|>\\n{a1}</s>\\n<|user|>\\n{p2}\\n<|assistant|>\\n{a2}</s>``:
  GritLM's layout (its ``BASE_BOS + TURN_SEP.join(USER_BOS + p + USER_EOS + ASSISTANT_BOS + a.strip()
  + ASSISTANT_EOS)`` with ``TURN_SEP="\\n"``, ``USER_EOS=""``), as the released RecFound trainer sets it.
  Answers are stripped, prompts are not. Labels are the ids of every answer's tokens and its EOS,
  -100 elsewhere (GritLM masks every prompt, so every answer of a multi-turn row is learned).

Tokenization. Each variable piece (instruction, text, prompt, answer) is encoded on its own as if it
followed a newline: ``encode("\\n" + piece)`` minus the leading word-boundary piece and newline byte.
In the Mistral SentencePiece model a newline is a byte-fallback token that no merge crosses, so
``encode(A + "\\n" + B) == encode(A) + [newline] + encode_after_newline(B)`` for any non-empty A
(tests check it against whole-string encoding). The concatenated pieces are therefore exactly the
tokens of the whole formatted string, and the prefix length is exact. The one place that is not a
whole-string encoding is the text after an EOS id (``\\n<|user|>\\n`` of a later turn), which is
encoded as if it followed a newline too (no lone word-boundary piece before the newline).
The same holds for a tokenizer.json converted from such a model (tests/test_tokenizer_json.py).

Which way (`Formatter`, `pieces_join_exactly`): a tokenizer.json is checked on a few joins
(`JOIN_PROBES`: a marker, ".", ":" and a blank line before a newline); if a merge crosses one, as in a
byte-level BPE (Llama 3, Qwen2.5: "|>\\n", ".\\n" and "|>\\n\\n" are single pre-tokens), every call goes to
`formatting_bpe.WholeStringFormatter`, which encodes each row (each turn, between BOS/EOS ids) as one
string and takes the prefix length and the labels from the tokens' character offsets; a token that spans
the boundary counts as prefix/prompt (``TruncationStats.boundary_tokens``). A SentencePiece model is
checked on the marker alone, as it always was (so its ids and token caches are those of earlier
versions), and refused if that fails: it gives no offsets.

Truncation (counted in :class:`TruncationStats`; the whole-string path applies the same rules to the
whole string's tokens, formatting_bpe.py says how):

- embedding: cut the text's tail; if the prefix leaves no room for one text token, cut the
  instruction's tail (keeping ``<|user|>\\n``, ``\\n<|embed|>\\n`` and one text token), or, with no
  room for any instruction token, fall back to ``<s><|embed|>\\n{text}``.
- generative: drop the oldest turns while more than one is left; then, in the last turn, keep the
  whole answer if the prompt can give way, else give the prompt at least half of the room and cut the
  answer's tail. The prompt is cut in its middle (its head, the instruction, and its tail, the
  options and "Response:", stay). The first answer token is never cut.

Tables: `tokenize_records` makes a split's tokenized tables in this process, as flat numpy arrays with
offsets (ragged int rows that batch assembly slices directly). `hf_tokenize` makes the same arrays
through ``datasets.Dataset.map`` with its fingerprinted cache: what a run uses (`train/inputs.py`).
"""
from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from recfound_jax.data import records as records_lib
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
from recfound_jax.data.formatting_bpe import WholeStringFormatter
from recfound_jax.tokenizer import TextTokenizer

FORMAT_VERSION = 2  # bump when the token layout or its stats change: part of hf_tokenize's cache fingerprint
CHUNK_ROWS = 4096

# (A, B): encode(A + "\n" + B) == encode(A) + [newline] + (B encoded after a newline) when no merge crosses a newline.
# A SentencePiece tokenizer is checked on the first alone, as it always was: the demo vocabulary
# (demo/vocabulary.py) has ".\n" and "\n\n" pieces and is formatted piece by piece all the same.
JOIN_PROBES = ((USER, "x"), ("x.", "y"), ("x:", " y"), (EMBED, "\n y"))


def pieces_join_exactly(tokenizer: TextTokenizer, probes: Sequence[tuple[str, str]] = JOIN_PROBES) -> bool:
    """Whether a newline is a prefix-stable token that no merge crosses (on ``probes``), so the formats can be
    encoded piece by piece (SentencePiece with byte fallback); False for a byte-level BPE, which merges "|>\\n"."""
    newline = tokenizer.encode("\n")
    if tokenizer.encode("\nx")[: len(newline)] != newline:
        return False
    after_newline = lambda text: tokenizer.encode("\n" + text)[len(newline):]
    return all(tokenizer.encode(a + "\n" + b) == tokenizer.encode(a) + newline[-1:] + after_newline(b)
               for a, b in probes)


class Formatter:
    """Builds GritLM-format token ids from (instruction, text) pairs and (prompt, answer) turns.

    Piece by piece when `pieces_join_exactly`; otherwise (a byte-level BPE) every call goes to a
    `formatting_bpe.WholeStringFormatter`, which encodes whole strings and needs the tokenizer's offsets
    (a tokenizer.json has them; a SentencePiece model that fails the check is refused).
    """

    def __init__(self, tokenizer: TextTokenizer, num_threads: int = -1):
        self.tokenizer = tokenizer
        self.num_threads = num_threads  # SentencePiece's batch encoder threads; -1: one per core
        self.bos_id = tokenizer.bos_id
        self.eos_id = tokenizer.eos_id
        self.whole_string: WholeStringFormatter | None = None
        if hasattr(tokenizer, "encode_batch_with_offsets") and not pieces_join_exactly(tokenizer):
            self.whole_string = WholeStringFormatter(tokenizer)
            return
        if not pieces_join_exactly(tokenizer, JOIN_PROBES[:1]):
            raise ValueError(f"{tokenizer.path}: '\\n' merges with the characters next to it, and this tokenizer "
                             "gives no offsets to encode the GritLM formats as whole strings")
        newline = tokenizer.encode("\n")
        self.newline_id = newline[-1]
        self._skip = len(newline)  # the word-boundary piece SentencePiece puts first, then the newline
        nl = [self.newline_id]
        self.user_first = tokenizer.encode(USER) + nl  # "<|user|>\n" right after BOS
        self.user_next = nl + self.encode_after_newline([USER])[0] + nl  # "\n<|user|>\n" after an EOS
        self.embed_after_instruction = nl + self.encode_after_newline([EMBED])[0] + nl  # "\n<|embed|>\n"
        self.embed_only = tokenizer.encode(EMBED) + nl  # "<|embed|>\n" right after BOS
        self.assistant = nl + self.encode_after_newline([ASSISTANT])[0] + nl  # "\n<|assistant|>\n"

    # ------------------------------------------------------------------ pieces

    def encode_after_newline(self, texts: Sequence[str]) -> list[Ids]:
        """Token ids of each text as it is tokenized right after a newline inside a longer string."""
        encoded = self.tokenizer.encode_batch(["\n" + t for t in texts], num_threads=self.num_threads)
        return [ids[self._skip:] for ids in encoded]

    def _encode_unique(self, texts: Sequence[str]) -> list[Ids]:
        """encode_after_newline, encoding each distinct text once (instructions repeat a lot)."""
        unique = list(dict.fromkeys(texts))
        table = dict(zip(unique, self.encode_after_newline(unique)))
        return [table[t] for t in texts]

    # ------------------------------------------------------------------ embedding

    def embedding_many(
        self, pairs: Sequence[tuple[str, str]], max_len: int | None = None, stats: TruncationStats | None = None
    ) -> list[tuple[Ids, int]]:
        """(ids, prefix_len) of each (instruction, text); ``ids[:prefix_len]`` is BOS and the prefix."""
        if self.whole_string is not None:
            return self.whole_string.embedding_many(pairs, max_len, stats)
        return self._merged(self.embedding_each(pairs, [max_len] * len(pairs)), stats)

    def embedding_each(
        self, pairs: Sequence[tuple[str, str]], max_lens: Sequence[int | None]
    ) -> list[tuple[Ids, int, TruncationStats]]:
        """(ids, prefix_len, stats) of each (instruction, text) at its own max_len: `embedding_many` with a
        row's truncation counted on its own (a `datasets` map returns per-row columns)."""
        if self.whole_string is not None:
            return [self._whole_string_row(self.whole_string.embedding_many, [pair], n)
                    for pair, n in zip(pairs, max_lens)]
        instructions = [instr.strip(INSTRUCTION_STRIP) for instr, _ in pairs]
        encoded = self._encode_unique(instructions + [text for _, text in pairs])
        n, out = len(pairs), []
        for i in range(n):
            stats = TruncationStats()
            ids, prefix_len = self._assemble_embedding(encoded[i] if instructions[i] else None, encoded[n + i],
                                                       max_lens[i], stats)
            out.append((ids, prefix_len, stats))
        return out

    @staticmethod
    def _merged(rows: list[tuple[Ids, Any, TruncationStats]], stats: TruncationStats | None) -> list[tuple[Ids, Any]]:
        """The rows of an ``*_each`` call with their truncation counts added into ``stats``."""
        stats = stats if stats is not None else TruncationStats()
        for _, _, row_stats in rows:
            stats.merge(row_stats)
        return [(first, second) for first, second, _ in rows]

    @staticmethod
    def _whole_string_row(many: Callable, rows: list, max_len: int | None) -> tuple[Ids, Any, TruncationStats]:
        """One row through a WholeStringFormatter's ``*_many``, with its own stats."""
        stats = TruncationStats()
        first, second = many(rows, max_len, stats)[0]
        return first, second, stats

    def format_embedding(
        self, instruction: str, text: str, max_len: int | None = None, stats: TruncationStats | None = None
    ) -> tuple[Ids, int]:
        """(ids, prefix_len) of one embedding input."""
        return self.embedding_many([(instruction, text)], max_len, stats)[0]

    def _assemble_embedding(
        self, instruction: Ids | None, text: Ids, max_len: int | None, stats: TruncationStats
    ) -> tuple[Ids, int]:
        stats.rows += 1
        prefix = self._embedding_prefix(instruction)
        full = 1 + len(prefix) + len(text)
        if max_len is not None and full > max_len:
            if 1 + len(prefix) + 1 <= max_len:
                stats.text_cut += 1
            else:
                stats.instruction_cut += 1
                stats.text_cut += int(len(text) > 1)
                prefix = self._shortened_prefix(instruction, max_len)
            text = text[: max_len - 1 - len(prefix)]
            stats.truncated += 1
            stats.tokens_removed += full - (1 + len(prefix) + len(text))
        return [self.bos_id] + prefix + text, 1 + len(prefix)

    def _embedding_prefix(self, instruction: Ids | None) -> Ids:
        if instruction is None:
            return self.embed_only
        return self.user_first + instruction + self.embed_after_instruction

    def _shortened_prefix(self, instruction: Ids | None, max_len: int) -> Ids:
        """The longest prefix that leaves room for BOS and one text token."""
        room = max_len - 2 - len(self.user_first) - len(self.embed_after_instruction)
        if instruction and room >= 1:
            return self.user_first + instruction[:room] + self.embed_after_instruction
        if 2 + len(self.embed_only) > max_len:
            raise ValueError(f"max_len={max_len} is too short for BOS, '<|embed|>\\n' and one text token")
        return self.embed_only

    # ------------------------------------------------------------------ generative

    def generative_many(
        self,
        conversations: Sequence[Sequence[tuple[str, str]]],
        max_len: int | None = None,
        stats: TruncationStats | None = None,
    ) -> list[tuple[Ids, Ids]]:
        """(ids, labels) of each conversation of (prompt, answer) turns; labels are -100 off answers."""
        if self.whole_string is not None:
            return self.whole_string.generative_many(conversations, max_len, stats)
        return self._merged(self.generative_each(conversations, max_len), stats)

    def generative_each(
        self, conversations: Sequence[Sequence[tuple[str, str]]], max_len: int | None
    ) -> list[tuple[Ids, Ids, TruncationStats]]:
        """(ids, labels, stats) of each conversation: `generative_many` with a row's truncation counted on its own."""
        if self.whole_string is not None:
            return [self._whole_string_row(self.whole_string.generative_many, [turns], max_len)
                    for turns in conversations]
        prompts = [p for turns in conversations for p, _ in turns]
        answers = [a.strip() for turns in conversations for _, a in turns]
        encoded_prompts = self._encode_unique(prompts)
        encoded_answers = self._encode_unique(answers)
        out, k = [], 0
        for turns in conversations:
            pieces = [(encoded_prompts[k + j], encoded_answers[k + j]) for j in range(len(turns))]
            k += len(turns)
            stats = TruncationStats()
            ids, labels = self._assemble_generative(pieces, max_len, stats)
            out.append((ids, labels, stats))
        return out

    def format_generative(
        self, turns: Sequence[tuple[str, str]], max_len: int | None = None, stats: TruncationStats | None = None
    ) -> tuple[Ids, Ids]:
        """(ids, labels) of one conversation."""
        return self.generative_many([turns], max_len, stats)[0]

    def _generative_length(self, pieces: Sequence[tuple[Ids, Ids]]) -> int:
        """Tokens of a conversation of (prompt, answer + EOS) pieces, BOS included."""
        n = 1 + len(self.user_first) - len(self.user_next)
        for prompt, answer in pieces:
            n += len(self.user_next) + len(prompt) + len(self.assistant) + len(answer)
        return n

    def _assemble_generative(
        self, pieces: list[tuple[Ids, Ids]], max_len: int | None, stats: TruncationStats
    ) -> tuple[Ids, Ids]:
        stats.rows += 1
        pieces = [(prompt, answer + [self.eos_id]) for prompt, answer in pieces]
        full = self._generative_length(pieces)
        if max_len is not None and full > max_len:
            pieces = self._fit_generative(pieces, max_len, stats)
            stats.truncated += 1
            stats.tokens_removed += full - self._generative_length(pieces)
        ids, labels = [self.bos_id], [IGNORE_INDEX]
        for k, (prompt, answer) in enumerate(pieces):
            prompt_ids = (self.user_first if k == 0 else self.user_next) + prompt + self.assistant
            ids += prompt_ids + answer
            labels += [IGNORE_INDEX] * len(prompt_ids) + answer
        return ids, labels

    def _fit_generative(
        self, pieces: list[tuple[Ids, Ids]], max_len: int, stats: TruncationStats
    ) -> list[tuple[Ids, Ids]]:
        """Drop the oldest turns, then share what is left between the last prompt and answer."""
        kept = list(pieces)
        while len(kept) > 1 and self._generative_length(kept) > max_len:
            kept.pop(0)
        if len(kept) < len(pieces):
            stats.turns_dropped += 1
        over = self._generative_length(kept) - max_len
        if over <= 0:
            return kept
        prompt, answer = kept[-1]
        room = len(prompt) + len(answer) - over  # tokens left for this prompt and answer (EOS included)
        if room < 1:
            raise ValueError(f"max_len={max_len} leaves no room for an answer token")
        keep = prompt_keep(len(prompt), len(answer), room)
        if keep < len(prompt):
            stats.prompt_cut += 1
            prompt = cut_middle(prompt, keep)
        if room - keep < len(answer):
            stats.answer_cut += 1
            answer = answer[: room - keep]
        return kept[:-1] + [(prompt, answer)]

    # ------------------------------------------------------------------ prompts for decoding

    def generative_prompts(
        self, prompts: Sequence[str], max_len: int | None = None, stats: TruncationStats | None = None
    ) -> list[Ids]:
        """Ids of ``<s><|user|>\\n{prompt}\\n<|assistant|>\\n`` for each prompt, one too long cut in its middle."""
        if self.whole_string is not None:
            return self.whole_string.generative_prompts(prompts, max_len, stats)
        return wrap_prompts(self._encode_unique(prompts), [self.bos_id] + self.user_first, self.assistant, max_len,
                            stats)


# ----------------------------------------------------------------------------- tokenized tables


@dataclasses.dataclass
class Ragged:
    """Rows of different lengths stored as one flat array and offsets (row i = data[off[i]:off[i+1]])."""

    data: np.ndarray
    offsets: np.ndarray  # int64 [n + 1]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def row(self, i: int) -> np.ndarray:
        return self.data[self.offsets[i]: self.offsets[i + 1]]

    @classmethod
    def from_rows(cls, rows: Sequence[Sequence[int]], dtype: Any) -> Ragged:
        """Pack Python lists of ints."""
        lengths = np.fromiter((len(r) for r in rows), np.int64, count=len(rows))
        offsets = np.zeros(len(rows) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        data = np.fromiter(itertools.chain.from_iterable(rows), dtype, count=int(offsets[-1]))
        return cls(data, offsets)

    @classmethod
    def concat(cls, parts: Sequence[Ragged], dtype: Any) -> Ragged:
        """One Ragged holding the rows of ``parts`` in order."""
        if not parts:
            return cls(np.zeros(0, dtype), np.zeros(1, np.int64))
        data = np.concatenate([p.data.astype(dtype, copy=False) for p in parts])
        lengths = np.concatenate([p.lengths for p in parts])
        offsets = np.zeros(len(lengths) + 1, np.int64)
        np.cumsum(lengths, out=offsets[1:])
        return cls(data, offsets)


@dataclasses.dataclass
class EmbeddingTable:
    """Tokenized embedding rows: every query and passage once, and which are whose."""

    seqs: Ragged  # BOS + prefix + text token ids of every distinct query and passage
    prefix_lens: np.ndarray  # int32 [n_seqs]: BOS + prefix tokens, excluded from pooling
    query: np.ndarray  # int64 [n_rows]: index into seqs of each row's query
    pos: Ragged  # per row: indices into seqs of its positives (never empty)
    neg: Ragged  # per row: indices into seqs of its hard negatives (may be empty)
    task_ids: np.ndarray  # int32 [n_rows]

    def __len__(self) -> int:
        return len(self.query)


@dataclasses.dataclass
class GenerativeTable:
    """Tokenized generative rows: ids, and where the loss is taken."""

    seqs: Ragged  # token ids
    loss_mask: np.ndarray  # uint8, aligned with seqs.data: 1 where the label is the token itself
    task_ids: np.ndarray  # int32 [n_rows]

    def __len__(self) -> int:
        return len(self.task_ids)

    def labels(self, i: int) -> np.ndarray:
        """Row i's labels: its ids on answer tokens, -100 elsewhere."""
        start, end = self.seqs.offsets[i], self.seqs.offsets[i + 1]
        ids = self.seqs.data[start:end].astype(np.int32)
        return np.where(self.loss_mask[start:end] == 1, ids, IGNORE_INDEX).astype(np.int32)


@dataclasses.dataclass
class TokenizedSplit:
    """A split's tokenized embedding and generative tables, with how they were made."""

    embedding: EmbeddingTable
    generative: GenerativeTable
    pad_id: int
    lengths: dict[str, int]  # query / passage / generative max lengths
    stats: dict[str, TruncationStats]  # per "query", "passage", "generative"
    report: records_lib.LoadReport | None = None


def token_dtype(vocab_size: int) -> Any:
    """The smallest unsigned dtype that holds every token id (uint16 for Mistral's 32768)."""
    return np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.int32


def _embedding_table(fmt: Formatter, rows: Sequence[records_lib.EmbeddingRecord], query_len: int,
                     passage_len: int, stats: dict[str, TruncationStats], dtype: Any) -> EmbeddingTable:
    """Each distinct query and each distinct passage (instruction, text) is tokenized and stored once:
    items recur across rows as positives and negatives. ``stats`` count distinct texts."""
    index: dict[str, dict[tuple[str, str], int]] = {"query": {}, "passage": {}}
    seq_parts, prefix_parts, n_seqs = [], [], 0
    query = np.empty(len(rows), np.int64)
    pos_rows, neg_rows = [], []
    for start in range(0, len(rows), CHUNK_ROWS):
        chunk = rows[start: start + CHUNK_ROWS]
        for kind, pairs, max_len in (("query", [r.query for r in chunk], query_len),
                                     ("passage", [p for r in chunk for p in r.pos + r.neg], passage_len)):
            seen = index[kind]
            new = [p for p in dict.fromkeys(pairs) if p not in seen]
            out = fmt.embedding_many(new, max_len, stats[kind])
            seen.update(zip(new, range(n_seqs, n_seqs + len(new))))
            n_seqs += len(new)
            seq_parts.append(Ragged.from_rows([ids for ids, _ in out], dtype))
            prefix_parts.append(np.asarray([n for _, n in out], np.int32))
        for i, r in enumerate(chunk):
            query[start + i] = index["query"][r.query]
            pos_rows.append([index["passage"][p] for p in r.pos])
            neg_rows.append([index["passage"][p] for p in r.neg])
    return EmbeddingTable(
        seqs=Ragged.concat(seq_parts, dtype),
        prefix_lens=np.concatenate(prefix_parts) if prefix_parts else np.zeros(0, np.int32),
        query=query,
        pos=Ragged.from_rows(pos_rows, np.int64),
        neg=Ragged.from_rows(neg_rows, np.int64),
        task_ids=np.asarray([r.task_id for r in rows], np.int32),
    )


def _generative_table(fmt: Formatter, rows: Sequence[records_lib.GenerativeRecord], max_len: int,
                      stats: TruncationStats, dtype: Any) -> GenerativeTable:
    seq_parts, mask_parts = [], []
    for start in range(0, len(rows), CHUNK_ROWS):
        out = fmt.generative_many([r.turns for r in rows[start: start + CHUNK_ROWS]], max_len, stats)
        seq_parts.append(Ragged.from_rows([ids for ids, _ in out], dtype))
        labels = Ragged.from_rows([labels for _, labels in out], np.int32)
        mask_parts.append((labels.data != IGNORE_INDEX).astype(np.uint8))
    return GenerativeTable(
        seqs=Ragged.concat(seq_parts, dtype),
        loss_mask=np.concatenate(mask_parts) if mask_parts else np.zeros(0, np.uint8),
        task_ids=np.asarray([r.task_id for r in rows], np.int32),
    )


def tokenize_records(
    records: Sequence[records_lib.Record],
    tokenizer: TextTokenizer,
    *,
    query_max_len: int,
    passage_max_len: int,
    generative_max_len: int,
    report: records_lib.LoadReport | None = None,
) -> TokenizedSplit:
    """Format and tokenize every record once, into flat numpy tables (in record order per kind)."""
    fmt = Formatter(tokenizer)
    dtype = token_dtype(tokenizer.vocab_size)
    stats = {"query": TruncationStats(), "passage": TruncationStats(), "generative": TruncationStats()}
    emb = [r for r in records if isinstance(r, records_lib.EmbeddingRecord)]
    gen = [r for r in records if isinstance(r, records_lib.GenerativeRecord)]
    lengths = {"query": query_max_len, "passage": passage_max_len, "generative": generative_max_len}
    return TokenizedSplit(
        embedding=_embedding_table(fmt, emb, query_max_len, passage_max_len, stats, dtype),
        generative=_generative_table(fmt, gen, generative_max_len, stats["generative"], dtype),
        pad_id=tokenizer.pad_id,
        lengths=lengths,
        stats=stats,
        report=report,
    )


_FORMATTERS: dict[int, Formatter] = {}


def _formatter(tokenizer: TextTokenizer) -> Formatter:
    fmt = _FORMATTERS.get(id(tokenizer))
    if fmt is None or fmt.tokenizer is not tokenizer:
        fmt = _FORMATTERS[id(tokenizer)] = Formatter(tokenizer)
    return fmt


def format_embedding(tokenizer: TextTokenizer, instruction: str, text: str, max_len: int | None = None,
                     stats: TruncationStats | None = None) -> tuple[Ids, int]:
    """(ids, prefix_len) of one embedding input in GritLM's format."""
    return _formatter(tokenizer).format_embedding(instruction, text, max_len, stats)


def format_generative(tokenizer: TextTokenizer, turns: Sequence[tuple[str, str]], max_len: int | None = None,
                      stats: TruncationStats | None = None) -> tuple[Ids, Ids]:
    """(ids, labels) of one conversation in GritLM's format."""
    return _formatter(tokenizer).format_generative(turns, max_len, stats)


def format_generative_prompts(tokenizer: TextTokenizer, prompts: Sequence[str], max_len: int | None = None,
                              stats: TruncationStats | None = None) -> list[Ids]:
    """Ids of ``<s><|user|>\\n{prompt}\\n<|assistant|>\\n`` for each prompt: the training format up to the answer.

    A prompt longer than ``max_len`` allows is cut in its middle, as training cuts it (its head, the
    instruction, and its tail, the options and "Response:", stay).
    """
    return _formatter(tokenizer).generative_prompts(prompts, max_len, stats)


def wrap_prompts(prompts: Sequence[Ids], head: Ids, tail: Ids, max_len: int | None = None,
                 stats: TruncationStats | None = None) -> list[Ids]:
    """``head + prompt + tail`` for each encoded prompt, one too long for ``max_len`` cut in its middle."""
    stats = stats if stats is not None else TruncationStats()
    return [wrap_prompt(head, list(prompt), tail, max_len, stats) for prompt in prompts]


def input_text(prompt: str) -> str:
    """The "### Input:" section of an Alpaca prompt: the text a row is about, whatever instruction asks it."""
    return prompt.split("### Input:\n", 1)[1].split("\n\n### ", 1)[0]


def options_of(prompt: str) -> list[str]:
    """The lines of the "### Options:" section of an Alpaca prompt."""
    return prompt.split("### Options:\n", 1)[1].split("\n\n### ", 1)[0].split("\n")
