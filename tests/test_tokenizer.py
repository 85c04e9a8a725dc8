"""The tokenizer against mistral-common's own SentencePiece tokenizer for the same v3 file."""
import pytest
from mistral_common.tokens.tokenizers.sentencepiece import SentencePieceTokenizer

from recfound_jax.tokenizer import Tokenizer, default_tokenizer_path

TEXTS = [
    "<s><|user|>\nRetrieve the item\n<|embed|>\nRed   cotton  shirt",
    "line one\n\n\nline    four\t tab",
    "  leading spaces and trailing  ",
    "Ünïcödé — 商品 ✓ emoji 🙂",
    "",
]


@pytest.fixture(scope="module")
def tokenizers():
    return Tokenizer(), SentencePieceTokenizer(str(default_tokenizer_path()))


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_mistral_common(tokenizers, text):
    ours, reference = tokenizers
    assert ours.encode(text, add_bos=True, add_eos=True) == reference.encode(text, bos=True, eos=True)
    assert ours.encode(text) == reference.encode(text, bos=False, eos=False)


def test_batch_encode_decode_and_special_ids(tokenizers):
    ours, reference = tokenizers
    batch = ours.encode_batch(TEXTS, add_bos=True)
    assert batch == [reference.encode(t, bos=True, eos=False) for t in TEXTS]
    assert ours.decode_batch(batch) == [reference.decode(reference.encode(t, bos=False, eos=False)) for t in TEXTS]
    assert (ours.bos_id, ours.eos_id, ours.vocab_size) == (1, 2, 32768)
    assert ours.pad_id not in (ours.bos_id, ours.eos_id)


def test_checkpoint_directory_without_tokenizer_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no tokenizer.model"):
        Tokenizer(tmp_path)
