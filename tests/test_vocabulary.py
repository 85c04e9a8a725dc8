"""The demo base's own SentencePiece vocabulary: its ids, pieces, determinism, and that the GritLM
formatter and the synthetic texts work with it."""
from __future__ import annotations

import pytest

from recfound_jax.data import formatting, instructions
from recfound_jax.demo import vocabulary
from recfound_jax.tokenizer import Tokenizer

TEXTS = [
    "Acme red steel kettle. Category: Kitchen. Price: 24 dollars.",
    "Borealis green cotton shirt, size medium, made by Borealis.",
    instructions.alpaca("Is the product a kettle?", "Acme red steel kettle.", ["yes", "no"]) + "\nyes",
    "<|user|>\nRetrieve the item the user buys next.\n<|embed|>\nAcme kettle",
] * 40


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory) -> Tokenizer:
    out = tmp_path_factory.mktemp("vocab") / "tokenizer.model"
    return Tokenizer(vocabulary.train_vocabulary(TEXTS, 600, out))


def test_ids_follow_mistral_s_conventions(tokenizer):
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id) == (0, 1, 2)
    assert tokenizer.vocab_size <= 600
    ids = tokenizer.encode("Acme kettle", add_bos=True, add_eos=True)
    assert ids == [1, *tokenizer.encode("Acme kettle"), 2] and len(ids) == 4


def test_markers_are_single_pieces_and_words_are_whole(tokenizer):
    for marker in (formatting.USER, formatting.EMBED, formatting.ASSISTANT):
        assert [tokenizer.id_to_piece(i) for i in tokenizer.encode_batch(["\n" + marker])[0]][-1] == marker
    assert [tokenizer.id_to_piece(i) for i in tokenizer.encode("Acme kettle")] == ["\u2581Acme", "\u2581kettle"]


def test_any_text_round_trips_through_byte_fallback(tokenizer):
    text = "Zyx\u00e9 \u6f22\u5b57 99.5 \n\n  two  spaces"
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_the_formatter_builds_gritlm_rows_with_it(tokenizer):
    ids, prefix = formatting.format_embedding(tokenizer, "Retrieve the item.", "Acme kettle")
    assert ids[0] == tokenizer.bos_id and 0 < prefix < len(ids)
    assert tokenizer.decode(ids[prefix:]) == "Acme kettle"


def test_training_is_deterministic(tmp_path, tokenizer):
    again = vocabulary.train_vocabulary(TEXTS, 600, tmp_path / "again.model")
    assert again.read_bytes() == tokenizer.path.read_bytes()


def test_a_vocabulary_below_the_byte_pieces_is_refused(tmp_path):
    with pytest.raises(ValueError, match="vocab_size=300"):
        vocabulary.train_vocabulary(TEXTS, 300, tmp_path / "small.model")
