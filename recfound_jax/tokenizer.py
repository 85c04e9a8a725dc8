"""The project's tokenizers: the Mistral v3 SentencePiece wrapper, and which tokenizer file is used when.

Which file (`resolve_tokenizer_path`, `load_tokenizer`):

- no path: the v3 SentencePiece model that ships inside the ``mistral-common`` package, the same file
  as Mistral-7B-Instruct-v0.3's ``tokenizer.model``;
- a checkpoint directory: its ``tokenizer.model`` (SentencePiece, `Tokenizer`), else its
  ``tokenizer.json`` (HF `tokenizers`, `recfound_jax.tokenizer_json.JsonTokenizer`, with the
  checkpoint's BOS/EOS/pad ids from the files next to it). A directory with both (a real
  Mistral-7B-Instruct-v0.3 snapshot ships both) uses ``tokenizer.model``: runs made before tokenizer.json
  was read keep their tokenizer file, token caches and ids, and the SentencePiece file is the one checked
  against mistral-common (tests/test_tokenizer.py checks that a faithful tokenizer.json of it gives the
  same ids on the project's formats);
- a file: that file, by its name (``*.json`` is a tokenizer.json, anything else SentencePiece).

Text is never parsed for special tokens on either path: BOS/EOS are added as ids, so ``<|user|>`` or
``<|embed|>`` in text are plain characters, as GritLM trains them.
"""
from __future__ import annotations

import importlib.util
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import sentencepiece as spm

from recfound_jax.tokenizer_json import TOKENIZER_FILE, JsonTokenizer

SENTENCEPIECE_FILE = "tokenizer.model"
_V3_FILE = "mistral_instruct_tokenizer_240323.model.v3"


def default_tokenizer_path() -> Path:
    """Path of the Mistral v3 SentencePiece model shipped inside ``mistral-common`` (found, not imported)."""
    spec = importlib.util.find_spec("mistral_common")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the mistral-common package is not installed: it ships the default tokenizer")
    path = Path(spec.submodule_search_locations[0]) / "data" / _V3_FILE
    if not path.is_file():
        raise FileNotFoundError(f"mistral-common does not ship {_V3_FILE} (looked at {path})")
    return path


class TextTokenizer(Protocol):
    """What the data, training and inference code needs of a tokenizer (`Tokenizer`, `JsonTokenizer`)."""

    path: Path
    bos_id: int
    eos_id: int
    pad_id: int

    @property
    def vocab_size(self) -> int: ...

    def piece_id(self, piece: str) -> int | None: ...

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]: ...

    def encode_batch(
        self, texts: Sequence[str], *, add_bos: bool = False, add_eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]: ...

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str: ...

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special: bool = True) -> list[str]: ...

    def id_to_piece(self, token_id: int) -> str: ...


def resolve_tokenizer_path(path: str | os.PathLike | None = None) -> Path:
    """A tokenizer file: ``path`` itself, ``path/tokenizer.model``, else ``path/tokenizer.json``, or (no path)
    the default v3 file."""
    if path is None:
        return default_tokenizer_path()
    path = Path(path)
    if path.is_dir():
        for name in (SENTENCEPIECE_FILE, TOKENIZER_FILE):
            if (path / name).is_file():
                return path / name
        raise FileNotFoundError(f"{path}: no {SENTENCEPIECE_FILE} or {TOKENIZER_FILE} in this directory")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    return path


def is_tokenizer_json(path: Path) -> bool:
    """Whether a tokenizer file is a HF tokenizer.json (by its name), not a SentencePiece model."""
    return path.name.endswith(".json")


def load_tokenizer(path: str | os.PathLike | None = None) -> TextTokenizer:
    """The tokenizer of ``path`` (a file, a checkpoint directory, or None for the default v3 file): a
    SentencePiece `Tokenizer` or a `JsonTokenizer`, chosen as the module docstring says."""
    resolved = resolve_tokenizer_path(path)
    return JsonTokenizer(resolved) if is_tokenizer_json(resolved) else Tokenizer(resolved)


class Tokenizer:
    """SentencePiece tokenizer with Mistral's bos/eos ids and a pad id (the unk id, 0)."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = resolve_tokenizer_path(path)
        if is_tokenizer_json(self.path):
            raise ValueError(f"{self.path}: a tokenizer.json, not a SentencePiece model; open it with load_tokenizer")
        self._sp = spm.SentencePieceProcessor(model_file=str(self.path))
        self.bos_id: int = self._sp.bos_id()
        self.eos_id: int = self._sp.eos_id()
        # Mistral has no pad token; 0 (<unk>) is never produced by byte-fallback encoding.
        self.pad_id: int = self._sp.pad_id() if self._sp.pad_id() >= 0 else self._sp.unk_id()

    @property
    def vocab_size(self) -> int:
        """The number of pieces."""
        return self._sp.get_piece_size()

    def piece_id(self, piece: str) -> int | None:
        """The id of a piece of the vocabulary (a control token such as "[INST]" too), None if it has none."""
        token = self._sp.piece_to_id(piece)
        return None if token == self._sp.unk_id() and piece != self._sp.id_to_piece(token) else token

    def encode(self, text: str, *, add_bos: bool = False, add_eos: bool = False) -> list[int]:
        """Token ids of one text, optionally with BOS first and EOS last."""
        ids = self._sp.encode(text)
        return ([self.bos_id] if add_bos else []) + ids + ([self.eos_id] if add_eos else [])

    def encode_batch(
        self, texts: Sequence[str], *, add_bos: bool = False, add_eos: bool = False, num_threads: int = -1
    ) -> list[list[int]]:
        """Token ids of many texts at once (SentencePiece's threaded batch encoder)."""
        batch = self._sp.encode(list(texts), num_threads=num_threads)
        head = [self.bos_id] if add_bos else []
        tail = [self.eos_id] if add_eos else []
        return [head + ids + tail for ids in batch]

    def decode(self, ids: Sequence[int], *, skip_special: bool = True) -> str:
        """Text of ids; bos/eos/pad are dropped unless ``skip_special`` is False."""
        ids = [int(i) for i in ids]
        if skip_special:
            special = {self.bos_id, self.eos_id, self.pad_id}
            ids = [i for i in ids if i not in special]
        return self._sp.decode(ids)

    def decode_batch(self, batch: Sequence[Sequence[int]], *, skip_special: bool = True) -> list[str]:
        """Texts of many id lists."""
        return [self.decode(ids, skip_special=skip_special) for ids in batch]

    def id_to_piece(self, token_id: int) -> str:
        """The piece of an id."""
        return self._sp.id_to_piece(int(token_id))
