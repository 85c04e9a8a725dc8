"""A checkpoint's own tokenizer.json (tokenizer_json.py) against the SentencePiece path, and its special ids.

The tokenizer.json of the v3 model is built here with `tokenizers` from the SentencePiece model
itself: BPE over the same pieces and ids, merges ordered by the merged piece's score (SentencePiece
BPE merges the best-scored pair first), byte fallback, the legacy Llama normalizer (prepend "▁",
spaces to "▁"), control and user-defined pieces as added tokens. transformers 5.24 does not convert it
offline faithfully: ``LlamaTokenizer.from_pretrained`` on a folder with tokenizer.model gets every piece
right but orders the merges by id, so the whitespace-run pieces (score -1e9, merged last by
SentencePiece) merge first ("a  b" gives "▁a ▁▁ b", not "▁a ▁ ▁b"), and its Metaspace pre-tokenizer
prepends no "▁" before a leading space; ``convert_slow_tokenizer.LlamaConverter`` fails in
``SentencePieceExtractor.extract``.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest
import tokenizers
from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers

from recfound_jax import jsonio
from recfound_jax.convert import export
from recfound_jax.data import hf_tokenize, prompt_formats
from recfound_jax.data.formatting import Formatter
from recfound_jax.runs import rundir
from recfound_jax.tasks import get_task
from recfound_jax.tokenizer import JsonTokenizer, Tokenizer, default_tokenizer_path, load_tokenizer
from recfound_jax.tokenizer_json import special_token_ids
from tests.bpe_fixtures import byte_level_bpe, write_tokenizer

NORMAL, CONTROL, USER_DEFINED = 1, 3, 4  # SentencePiece piece types

ALPACA = ("Below is an instruction that describes a task, paired with an input that provides further context. "
          "Write a response that appropriately completes the request.\n\n### Instruction:\nGiven the user's "
          "history, pick the next item.\n\n### Input:\nA. Red shirt\nB. Blue  jeans\n\n### Response:")
TEXTS = [
    "<|user|>\nRetrieve the item\n<|embed|>\nRed   cotton  shirt",
    "<|embed|>\n",
    "\n<|user|>\n",
    "\n<|assistant|>\n",
    ALPACA,
    "<s>[INST] text that names </s> and <unk> [/INST]",
    "line one\n\n\nline    four\t tab",
    "a  b",
    "Ünïcödé — 商品 ✓ emoji 🙂 12345 3.14",
    "\n",
    "\nx",
    "",
]


def sentencepiece_to_tokenizer_json(model: Path, *, metaspace: bool = False) -> tokenizers.Tokenizer:
    """A tokenizer.json of a SentencePiece BPE model; ``metaspace`` writes the non-legacy pre-tokenizer
    (Metaspace, prepend_scheme "first") instead of the legacy normalizer."""
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(model.read_bytes())
    vocab = {p.piece: i for i, p in enumerate(proto.pieces)}
    merges = []
    for i in sorted(range(len(proto.pieces)), key=lambda i: (-proto.pieces[i].score, i)):
        piece = proto.pieces[i]
        if piece.type != NORMAL:
            continue
        text = piece.piece
        splits = [(text[:k], text[k:]) for k in range(1, len(text)) if text[:k] in vocab and text[k:] in vocab]
        merges += sorted(splits, key=lambda ab: (vocab[ab[0]], vocab[ab[1]]))
    tok = tokenizers.Tokenizer(models.BPE(vocab, merges, unk_token=proto.trainer_spec.unk_piece, fuse_unk=True,
                                          byte_fallback=True))
    if metaspace:
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=False)
    else:
        tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_tokens([AddedToken(p.piece, normalized=False, special=p.type in (CONTROL, 2))
                    for p in proto.pieces if p.type in (CONTROL, USER_DEFINED, 2)])
    return tok


@pytest.fixture(scope="module")
def v3_dir(tmp_path_factory) -> Path:
    """A checkpoint folder with only a tokenizer.json of the v3 model and Mistral's tokenizer_config.json."""
    tok = sentencepiece_to_tokenizer_json(default_tokenizer_path())
    return write_tokenizer(tmp_path_factory.mktemp("v3json"), tok, bos_token="<s>", eos_token="</s>",
                                       unk_token="<unk>", pad_token=None, added_tokens_decoder={})


@pytest.fixture(scope="module")
def both(v3_dir) -> tuple[Tokenizer, JsonTokenizer]:
    return Tokenizer(), load_tokenizer(v3_dir)


def test_the_converted_file_has_sentencepieces_vocabulary(both):
    sp, js = both
    assert isinstance(js, JsonTokenizer) and js.vocab_size == sp.vocab_size == 32768
    assert all(js.id_to_piece(i) == sp.id_to_piece(i) for i in range(sp.vocab_size))
    assert (js.bos_id, js.eos_id, js.pad_id) == (sp.bos_id, sp.eos_id, sp.pad_id) == (1, 2, 0)
    assert js.piece_id("[INST]") == sp.piece_id("[INST]") == 3 and js.piece_id("no such piece") is None


@pytest.mark.parametrize("text", TEXTS)
def test_both_paths_give_the_same_ids(both, text):
    sp, js = both
    assert js.encode(text) == sp.encode(text)
    assert js.encode(text, add_bos=True, add_eos=True) == sp.encode(text, add_bos=True, add_eos=True)
    assert js.decode(js.encode(text)) == sp.decode(sp.encode(text))


def test_special_tokens_in_text_are_plain_characters(both):
    sp, js = both
    ids = js.encode("<s>[INST]</s>")
    assert not {1, 2, 3} & set(ids) and ids == sp.encode("<s>[INST]</s>")
    assert js.encode_batch(TEXTS, add_bos=True) == sp.encode_batch(TEXTS, add_bos=True)
    assert js.decode_batch(js.encode_batch(TEXTS)) == sp.decode_batch(sp.encode_batch(TEXTS))


def test_the_one_difference_is_sentencepieces_user_defined_pieces(both):
    """SentencePiece matches its user-defined pieces in text ([REFERENCE_DOC_0..19] in v3); the tokenizer.json
    path matches no added token at all. No RecFound text has them; a folder with both files uses tokenizer.model."""
    sp, js = both
    text = "see [REFERENCE_DOC_1]"
    assert sp.piece_id("[REFERENCE_DOC_1]") in sp.encode(text)
    assert sp.piece_id("[REFERENCE_DOC_1]") not in js.encode(text)
    assert js.decode(js.encode(text)) == text


def _random_text(rng: random.Random) -> str:
    pieces = ["shoe", " red", "  ", "\n", "\t", "é", "日本", "🙂", "The", " Quick", "<|", "|>", ".", ":", "\u00a0",
              "Option A", " B.", "\n\n", "12", "$", "<s>", "[INST]"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))


def test_formatter_gives_the_same_ids_on_both_paths(both):
    sp, js = both
    ours, theirs = Formatter(sp), Formatter(js)
    rng = random.Random(0)
    for _ in range(100):
        instr, text, prompt, answer = (_random_text(rng) for _ in range(4))
        assert theirs.format_embedding(instr, text) == ours.format_embedding(instr, text)
        turns = [(prompt, answer + "x"), (ALPACA, "B")]
        assert theirs.format_generative(turns, 96) == ours.format_generative(turns, 96)
    assert (prompt_formats.prompt_ids(js, [ALPACA], "mistral-instruct")
            == prompt_formats.prompt_ids(sp, [ALPACA], "mistral-instruct"))


def test_a_metaspace_file_differs_only_on_a_leading_space(tmp_path, both):
    """The non-legacy layout (no normalizer, Metaspace prepend_scheme "first") prepends no "▁" before a text
    that starts with a space; every string the formats encode starts with "<|" or "\\n", so the formats agree."""
    sp, _ = both
    tok = sentencepiece_to_tokenizer_json(default_tokenizer_path(), metaspace=True)
    js = load_tokenizer(write_tokenizer(tmp_path, tok, bos_token="<s>", eos_token="</s>"))
    assert [t for t in TEXTS if js.encode(t) != sp.encode(t)] == []
    assert js.encode("  leading") != sp.encode("  leading")
    rng = random.Random(1)
    ours, theirs = Formatter(sp), Formatter(js)
    for _ in range(50):
        instr, text = _random_text(rng), " " + _random_text(rng)
        assert theirs.format_embedding(instr, text) == ours.format_embedding(instr, text)


def test_special_ids_come_from_the_checkpoint(tmp_path, both):
    tok = sentencepiece_to_tokenizer_json(default_tokenizer_path())
    folder = write_tokenizer(tmp_path / "a", tok, bos_token={"content": "[INST]", "special": True},
                                         eos_token="[/INST]", pad_token="<unk>")
    js = load_tokenizer(folder)
    assert (js.bos_id, js.eos_id, js.pad_id) == (3, 4, 0)
    assert js.encode("x", add_bos=True, add_eos=True) == [3, *both[0].encode("x"), 4]
    vocab = {"<s>": 1, "</s>": 2, "[INST]": 3, "<pad>": 7}
    # special_tokens_map.json wins only on transformers' legacy path (no added_tokens_decoder) ...
    (folder / "special_tokens_map.json").write_text(json.dumps({"bos_token": "<s>", "pad_token": "<pad>"}))
    assert special_token_ids(folder, vocab | {"[/INST]": 4, "<unk>": 0}) == {"bos": 1, "eos": 4, "pad": 7}
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "[INST]", "added_tokens_decoder": {}}))
    # ... and unnamed ids come from generation_config.json, then config.json (the first of a list).
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 4]}))
    (folder / "config.json").write_text(json.dumps({"bos_token_id": 9, "eos_token_id": 9, "pad_token_id": 5}))
    assert special_token_ids(folder, vocab) == {"bos": 3, "eos": 2, "pad": 5}
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<nope>"}))
    with pytest.raises(ValueError, match="bos_token '<nope>' is not in"):
        special_token_ids(folder, vocab)
    with pytest.raises(ValueError, match="no bos token"):
        load_tokenizer(write_tokenizer(tmp_path / "b", tok))



@pytest.fixture(scope="module")
def llama3_like(tmp_path_factory) -> Path:
    """A byte-level BPE tokenizer.json trained here on a few strings, with Llama-3-style special tokens."""
    tok = byte_level_bpe(TEXTS * 3 + ["the user bought running shoes", "商品 🙂"],
                         ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"], 400)
    return write_tokenizer(tmp_path_factory.mktemp("llama3"), tok, bos_token="<|begin_of_text|>",
                                       eos_token="<|eot_id|>", added_tokens_decoder={})


def test_a_byte_level_bpe_loads_round_trips_and_parses_no_special_tokens(llama3_like):
    js = load_tokenizer(llama3_like)
    bos, eos = js.piece_id("<|begin_of_text|>"), js.piece_id("<|eot_id|>")
    assert (js.bos_id, js.eos_id, js.pad_id) == (bos, eos, eos)  # no pad and no unk token: EOS pads
    for text in TEXTS + ["<|begin_of_text|>hi<|eot_id|>", "  spaces  "]:
        ids = js.encode(text)
        assert js.decode(ids) == text
        assert not {bos, eos, js.piece_id("<|end_of_text|>")} & set(ids)
    assert js.encode("hi", add_bos=True, add_eos=True) == [bos, *js.encode("hi"), eos]
    assert js.decode([bos, *js.encode("hi"), eos], skip_special=False) == "<|begin_of_text|>hi<|eot_id|>"


def test_the_formatter_encodes_a_byte_level_bpe_as_whole_strings(llama3_like):
    """Its pieces do not join into the whole string's tokens (tests/test_formatting_bpe.py checks the ids)."""
    assert Formatter(load_tokenizer(llama3_like)).whole_string is not None


def test_which_file_a_checkpoint_folder_uses(tmp_path, v3_dir):
    assert isinstance(load_tokenizer(v3_dir), JsonTokenizer)
    assert rundir.tokenizer_path(v3_dir) == v3_dir / "tokenizer.json"
    both_files = tmp_path / "both"
    both_files.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (both_files / name).write_bytes((v3_dir / name).read_bytes())
    (both_files / "tokenizer.model").write_bytes(default_tokenizer_path().read_bytes())
    assert isinstance(load_tokenizer(both_files), Tokenizer)
    assert rundir.tokenizer_path(both_files) == both_files / "tokenizer.model"
    with pytest.raises(ValueError, match="open it with load_tokenizer"):
        Tokenizer(v3_dir)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no tokenizer.model or tokenizer.json"):
        load_tokenizer(tmp_path / "empty")


def test_a_run_on_a_tokenizer_json_base_records_and_reloads_it(tmp_path, v3_dir):
    """run.json names the tokenizer.json; `rundir.load_tokenizer` reopens it with the base's special ids, and the
    tokenized tables equal the SentencePiece path's."""
    data = tmp_path / "data"
    for split in ("train", "valid"):
        (data / split).mkdir(parents=True)
        rows = [{"text": ["Rate: nice\n\n### Response:", "E"], "task": "Sentiment_Analysis"},
                {"text": [ALPACA, "A. Red shirt"], "task": "Sequential_Recommendation"}]
        (data / split / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kwargs = dict(query_max_len=16, passage_max_len=32, generative_max_len=64)
    path = rundir.tokenizer_path(v3_dir)
    run = tmp_path / "run"
    run.mkdir()
    jsonio.write_json(run / rundir.RUN_FILE, {"base": str(v3_dir), "tokenizer": str(path)})
    reloaded = rundir.load_tokenizer(run)
    assert isinstance(reloaded, JsonTokenizer) and reloaded.path == path and reloaded.bos_id == 1
    ours = hf_tokenize.tokenize_split(data, "train", Tokenizer(), cache_dir=tmp_path / "cache", **kwargs)
    theirs = hf_tokenize.tokenize_split(data, "train", reloaded, cache_dir=tmp_path / "cache", **kwargs)
    assert theirs.generative.seqs.data.tolist() == ours.generative.seqs.data.tolist()
    # the tokenizer file (and a tokenizer.json's special ids) is in the cache's fingerprint
    assert len(list((tmp_path / "cache").glob("train-generative-*.arrow"))) == 2


def test_an_export_carries_the_tokenizer_json_and_its_special_ids(tmp_path, v3_dir, both):
    folded, sentencepiece = tmp_path / "json", tmp_path / "spm"
    folded.mkdir()
    sentencepiece.mkdir()
    export.copy_tokenizer(v3_dir / "tokenizer.json", folded)
    export.copy_tokenizer(default_tokenizer_path(), sentencepiece)
    assert sorted(p.name for p in folded.iterdir()) == ["tokenizer.json", "tokenizer_config.json"]
    assert [p.name for p in sentencepiece.iterdir()] == ["tokenizer.model"]
    again = load_tokenizer(folded)
    assert (again.bos_id, again.eos_id, again.pad_id) == (1, 2, 0) and again.encode(ALPACA) == both[0].encode(ALPACA)
    readme = export.readme_text(get_task("Emb_user"), tmp_path, 1, "c", "float32", "tokenizer.json")
    assert "tokenizer.json (HF tokenizers" in readme and "matching no added token" in readme
