"""The demo base's own SentencePiece vocabulary: BPE trained on the synthetic world's train side.

A real Mistral's 32,768-piece vocabulary makes the LM head the largest cost of a hidden-128 model on a
CPU, and the synthetic world has fewer than 3,000 distinct words. So the demo base gets a vocabulary of
``model.vocab_size`` pieces trained by the ``sentencepiece`` library on the pretraining corpus and every
train-split text (prompts, answers, queries, passages and their instructions), with the v3 file's
conventions: BPE, identity normalisation, whitespace kept as it is, a dummy prefix, digits split, byte
fallback (so any text still encodes), ids 0/1/2 for unk/bos/eos, no pad piece. The GritLM markers
``<|user|>``, ``<|embed|>`` and ``<|assistant|>`` are single pieces. The real v3 tokenizer stays the default
for every checkpoint that ships its own or none.
"""
from __future__ import annotations

import io
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm

from recfound_jax.config import DEMO_MIN_VOCAB
from recfound_jax.data.formatting import ASSISTANT, EMBED, USER
from recfound_jax.demo import synthetic
from recfound_jax.tasks import TASKS


def train_split_texts(data_dir: str | os.PathLike) -> Iterator[str]:
    """Every text of the train split of a synthetic dataset: prompts and answers, queries, passages and
    their instructions."""
    for task in TASKS:
        for row in synthetic.read_rows(data_dir, "train", task.name):
            if task.is_embedding:
                for pair in [row["query"], *row["pos"], *row["neg"]]:
                    yield from pair
            else:
                yield from row["text"]


def train_vocabulary(texts: Iterable[str], vocab_size: int, out_file: str | os.PathLike) -> Path:
    """Train a BPE SentencePiece model of at most ``vocab_size`` pieces on ``texts`` into ``out_file``.

    The size is a ceiling: a corpus with fewer distinct pieces gives a smaller model (the base build,
    `pretrain.write_tokenizer`, refuses one smaller than model.vocab_size). Deterministic for the same texts
    in the same order.
    """
    if vocab_size < DEMO_MIN_VOCAB:
        raise ValueError(f"vocab_size={vocab_size}: a byte-fallback vocabulary needs at least {DEMO_MIN_VOCAB} pieces")
    # Read every text here, not from inside the trainer: an exception raised in its callback (SIGTERM's
    # SystemExit, `cli.run`) comes back out of the C++ code as a RuntimeError.
    sentences = list(texts)
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences), model_writer=model, vocab_size=vocab_size, hard_vocab_limit=False,
        model_type="bpe", normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=True, split_digits=True, allow_whitespace_only_pieces=True, byte_fallback=True,
        character_coverage=1.0, unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
        user_defined_symbols=[USER, EMBED, ASSISTANT], max_sentence_length=1 << 20, num_threads=1,
        minloglevel=2)
    out = Path(out_file)
    out.write_bytes(model.getvalue())
    return out
