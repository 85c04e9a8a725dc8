"""A checkpoint's own ``tokenizer.json`` (HF `tokenizers`), with the checkpoint's BOS/EOS/pad ids.

Real snapshots of Mistral-7B-Instruct-v0.3, Llama 3 and Qwen2.5 ship one. It has the same interface
as the SentencePiece `recfound_jax.tokenizer.Tokenizer`, and the same rule: text is never parsed for
special tokens, BOS/EOS are added as ids.

Text and added tokens. `tokenizers` splits every added token (special or not) out of the text
before its normalizer and model run, whatever ``add_special_tokens`` says (that flag only switches
the post-processor's BOS/EOS template); ``encode_special_tokens = True`` stops it for special tokens
only. So the text is encoded with a copy of the file whose ``added_tokens`` list is empty: no added
token is ever matched, and ``<s>``, ``[INST]``, ``<|begin_of_text|>`` or ``<|user|>`` in text are
plain characters. The copy has no post-processor either (without the template it adds no ids).
`encode_with_offsets` gives each token's character offsets in the text too, which the GritLM formats
need for a byte-level BPE (data/formatting_bpe.py). The full file still decodes every id and names
every piece (`piece_id`).

Special ids, in the order transformers 5 reads them (`PreTrainedTokenizerBase._from_pretrained`):
``bos_token``/``eos_token``/``pad_token`` of tokenizer_config.json; special_tokens_map.json overrides
them only where tokenizer_config.json has no ``added_tokens_decoder`` (transformers' legacy path) or
is missing. A name still unset (or null) is taken from ``{name}_token_id`` of generation_config.json,
then of config.json (the model files generation falls back to; the first id of a list, as Llama-3
Instruct lists two EOS ids). BOS and EOS must be found. Pad: the checkpoint's pad id when it names
one, else the model's unk token (the SentencePiece path's rule: its pad id, else unk), else EOS.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tokenizers

TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
SPECIAL_TOKENS_MAP = "special_tokens_map.json"
MODEL_CONFIGS = ("generation_config.json", "config.json")
SPECIAL_NAMES = ("bos", "eos", "pad")


def _read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _token_text(value: Any) -> str | None:
    """A special token as tokenizer_config.json writes it: a string, an AddedToken dict, or null."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def special_token_ids(directory: Path, vocab: dict[str, int]) -> dict[str, int | None]:
    """{"bos", "eos", "pad"} -> id from a checkpoint directory's files (module docstring), None where unnamed.

    ``vocab`` maps token text to id (added tokens included). A token text the vocabulary lacks is a
    ValueError naming the file.
    """
    config = _read_json(directory / TOKENIZER_CONFIG)
    special_map = _read_json(directory / SPECIAL_TOKENS_MAP)
    sources: list[tuple[str, dict[str, Any]]] = []  # later ones win
    if config is not None:
        sources.append((TOKENIZER_CONFIG, config))
    if special_map is not None and (config is None or "added_tokens_decoder" not in config):
        sources.append((SPECIAL_TOKENS_MAP, special_map))
    ids: dict[str, int | None] = dict.fromkeys(SPECIAL_NAMES)
    for file, values in sources:
        for name in SPECIAL_NAMES:
            text = _token_text(values.get(f"{name}_token"))
            if text is None:
                continue
            if text not in vocab:
                raise ValueError(f"{directory / file}: {name}_token {text!r} is not in {TOKENIZER_FILE}'s vocabulary")
            ids[name] = vocab[text]
    for file in MODEL_CONFIGS:
        values = _read_json(directory / file) or {}
        for name in SPECIAL_NAMES:
            if ids[name] is None:
                ids[name] = _first_id(values.get(f"{name}_token_id"))
    return ids


class JsonTokenizer:
    """A ``tokenizer.json`` tokenizer with the checkpoint's bos/eos/pad ids (module docstring)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path}: tokenizer file not found")
        spec = json.loads(self.path.read_text(encoding="utf-8"))
        self._full = tokenizers.Tokenizer.from_str(json.dumps(spec))
        # No post-processor either: without add_special_tokens it adds no ids, but a ByteLevel one with
        # trim_offsets moves a token's start past its leading spaces, and encode_with_offsets needs true starts.
        self._plain = tokenizers.Tokenizer.from_str(json.dumps({**spec, "added_tokens": [], "post_processor": None}))
        vocab = self._full.get_vocab(with_added_tokens=True)
        self._vocab_size = max(vocab.values()) + 1
        ids = special_token_ids(self.path.parent, vocab)
        for name in ("bos", "eos"):
            if ids[name] is None:
                raise ValueError(f"{self.path.parent}: no {name} token in {TOKENIZER_CONFIG}, {SPECIAL_TOKENS_MAP} "
                                 f"or {name}_token_id in {' / '.join(MODEL_CONFIGS)}")
        self.bos_id: int = ids["bos"]
        self.eos_id: int = ids["eos"]
        unk = spec.get("model", {}).get("unk_token")
        fallback = vocab.get(unk, self.eos_id) if unk else self.eos_id
        self.pad_id: int = ids["pad"] if ids["pad"] is not None else fallback

    @property
    def vocab_size(self) -> int:
        """One more than the largest id (added tokens included)."""
        return self._vocab_size

    def piece_id(self, piece: str) -> int | None:
        """The id of a token of the vocabulary (an added or special token too), None if it has none."""
        return self._full.token_to_id(piece)

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of one text, optionally with BOS first and EOS last."""
        ids = self._plain.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(
        self, texts: Sequence[str], *, add_bos: bool = False, add_eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]:
        """Token ids of many texts at once. ``num_threads`` is accepted for the SentencePiece interface and
        ignored: `tokenizers` sizes its own pool (RAYON_NUM_THREADS / TOKENIZERS_PARALLELISM)."""
        batch = self._plain.encode_batch(list(texts), add_special_tokens=False)
        head = [self.bos_id] if add_bos else []
        tail = [self.eos_id] if add_eos else []
        return [head + encoding.ids + tail for encoding in batch]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of one text (no BOS/EOS) and each token's (start, end) character offsets in the text."""
        encoding = self._plain.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_batch_with_offsets(self, texts: Sequence[str]) -> list[tuple[list[int], list[tuple[int, int]]]]:
        """`encode_with_offsets` of many texts at once."""
        return [(e.ids, e.offsets) for e in self._plain.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of ids; bos/eos/pad are dropped unless ``skip_special`` is False (other ids are kept)."""
        ids = [int(i) for i in ids]
        if skip_special:
            special = {self.bos_id, self.eos_id, self.pad_id}
            ids = [i for i in ids if i not in special]
        return self._full.decode(ids, skip_special_tokens=False)

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special: bool = True) -> list[str]:
        """Texts of many id lists."""
        return [self.decode(ids, skip_special=skip_special) for ids in batch]

    def id_to_piece(self, token_id: int) -> str:
        """The token text of an id."""
        return self._full.id_to_token(int(token_id))
