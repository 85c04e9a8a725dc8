"""GritLM formats for a byte-level BPE tokenizer: data/formatting_bpe.py, chosen by data/formatting.py's Formatter.

The tokenizer is a Llama-3-like byte-level BPE trained here on formatted strings, so that merges across the
format's boundaries exist ("|>\\n\\n" before a text that starts with a newline, ".\\n" after an instruction).
The reference is transformers' fast tokenizer on the whole formatted string, with BOS/EOS written as their
token texts (as GritLM's trainer writes them) and the boundaries taken from its offset mapping.
"""
from __future__ import annotations

import random
from pathlib import Path

import pytest
import transformers

from recfound_jax.data import formatting, hf_tokenize
from recfound_jax.data.formatting import IGNORE_INDEX, Formatter, TruncationStats
from recfound_jax.demo import synthetic
from recfound_jax.tokenizer import load_tokenizer
from recfound_jax.tokenizer_json import JsonTokenizer
from tests.bpe_fixtures import byte_level_bpe, write_tokenizer

BOS, EOS = "<|begin_of_text|>", "<|eot_id|>"
WORDS = ["shoe", " red", "  ", "\n", "\t", "é", "日本", "🙂", "The", " Quick", "<|", "|>", ".", ":", "\u00a0",
         "Option A", " B.", "\n\n", "12", "345", "$", " item", "\r\n", " user"]


def _random_text(rng: random.Random, lo: int = 1, hi: int = 12) -> str:
    return "".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _instruction(rng: random.Random) -> str:
    """Instructions end in "." or ":" (the ":" is stripped), and sometimes in a space or a newline."""
    return "Represent the" + _random_text(rng, 0, 4) + rng.choice([".", ":", ". ", ":\n", "", " item."])


def _text(rng: random.Random) -> str:
    """Texts often start with spaces or newlines, which merge with the newline before them."""
    return rng.choice(["", " ", "  ", "\n", "\n\n", "\n ", "\t"]) + _random_text(rng)


def _answer(rng: random.Random) -> str:
    head = rng.choice(["A", "B.", "(C)", "yes", "12", "🙂 ok", ".x"])
    return rng.choice(["", " ", "\n"]) + head + _random_text(rng, 0, 3)


def _embedding_head(instruction: str) -> str:
    stripped = instruction.strip("\t\n :")
    return f"<|user|>\n{stripped}\n<|embed|>\n" if stripped else "<|embed|>\n"


def _turn_text(k: int, prompt: str, answer: str) -> str:
    return ("<|user|>\n" if k == 0 else "\n<|user|>\n") + prompt + "\n<|assistant|>\n" + answer.strip()


@pytest.fixture(scope="module")
def bpe_path(tmp_path_factory) -> Path:
    """A checkpoint folder with a byte-level BPE tokenizer.json (Llama 3's split regex) and its config."""
    rng = random.Random(7)
    corpus = []
    for _ in range(400):
        corpus.append(_embedding_head(_instruction(rng)) + _text(rng))
        corpus.append(_turn_text(rng.randint(0, 1), _random_text(rng) + "\n\n### Response:", _answer(rng)))
    tok = byte_level_bpe(corpus, [BOS, "<|end_of_text|>", EOS], 900)
    folder = write_tokenizer(tmp_path_factory.mktemp("bpe"), tok, bos_token=BOS, eos_token=EOS, added_tokens_decoder={})
    return folder / "tokenizer.json"


@pytest.fixture(scope="module")
def tok(bpe_path) -> JsonTokenizer:
    return load_tokenizer(bpe_path.parent)


@pytest.fixture(scope="module")
def fmt(tok) -> Formatter:
    return Formatter(tok)


@pytest.fixture(scope="module")
def ref(bpe_path):
    """The outside reference: transformers' fast tokenizer of the same file."""
    return transformers.PreTrainedTokenizerFast(tokenizer_file=str(bpe_path))


def _reference(ref, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    out = ref(text, add_special_tokens=False, return_offsets_mapping=True)
    return out["input_ids"], [tuple(o) for o in out["offset_mapping"]]


def test_the_formatter_takes_the_whole_string_path_and_merges_cross_boundaries(tok, fmt, ref):
    assert fmt.whole_string is not None and tok.bos_id == ref.convert_tokens_to_ids(BOS)
    text = "<|user|>\nRepresent the item.\n<|embed|>\n\n red shoe"
    ids, offsets = _reference(ref, text)
    spans = [text[a:b] for a, b in offsets]
    assert ".\n" in spans and "|>\n\n" in spans  # merges across the instruction/marker and prefix/text boundaries
    assert tok.encode_with_offsets(text) == (ids, offsets)
    assert tok.encode_batch_with_offsets([text, "x"]) == [(ids, offsets), tok.encode_with_offsets("x")]


def test_random_embedding_inputs_equal_the_whole_string(tok, fmt, ref):
    rng = random.Random(0)
    stats = TruncationStats()
    pairs = [(_instruction(rng) if rng.random() < 0.8 else rng.choice(["", " :\n"]), _text(rng)) for _ in range(300)]
    out = fmt.embedding_many(pairs, stats=stats)
    straddles = 0
    for (instruction, text), (ids, prefix_len) in zip(pairs, out):
        whole = BOS + _embedding_head(instruction) + text
        ref_ids, offsets = _reference(ref, whole)
        assert ids == ref_ids
        boundary = len(BOS + _embedding_head(instruction))
        assert prefix_len == sum(start < boundary for start, _ in offsets)
        straddles += any(start < boundary < end for start, end in offsets)
        assert fmt.format_embedding(instruction, text) == (ids, prefix_len)
    assert straddles > 0 and stats.boundary_tokens == straddles  # the test is meaningful, and the merges counted
    assert stats.rows == 300 and stats.truncated == 0


def _conversation(rng: random.Random) -> list[tuple[str, str]]:
    return [(rng.choice(["", "\n", " "]) + _random_text(rng) + rng.choice(["", "\n\n### Response:", " :", "."]),
             _answer(rng)) for _ in range(rng.randint(1, 3))]


def test_random_conversations_equal_the_whole_string(tok, fmt, ref):
    rng = random.Random(1)
    conversations = [_conversation(rng) for _ in range(200)]
    out = fmt.generative_many(conversations)
    for turns, (ids, labels) in zip(conversations, out):
        whole, answer_spans = BOS, []
        for k, (prompt, answer) in enumerate(turns):
            whole += _turn_text(k, prompt, answer)
            answer_start = len(whole) - len(answer.strip())
            whole += EOS
            answer_spans.append((answer_start, len(whole)))
        ref_ids, offsets = _reference(ref, whole)
        assert ids == ref_ids
        expected = [token if any(a <= start < b for a, b in answer_spans) else IGNORE_INDEX
                    for token, (start, _) in zip(ref_ids, offsets)]
        assert labels == expected
        assert labels.count(tok.eos_id) == len(turns)
        assert fmt.format_generative(turns) == (ids, labels)


def test_decoding_prompts_equal_the_whole_string_and_the_training_prompt(tok, fmt, ref):
    rng = random.Random(2)
    prompts = [_random_text(rng) + rng.choice(["", "\n\n### Response:", "."]) for _ in range(100)]
    out = formatting.format_generative_prompts(tok, prompts)
    for prompt, ids in zip(prompts, out):
        assert ids == _reference(ref, BOS + f"<|user|>\n{prompt}\n<|assistant|>\n")[0]
        train_ids, labels = fmt.format_generative([(prompt, "B")])
        assert train_ids[: labels.index(next(x for x in labels if x != IGNORE_INDEX))] == ids
    stats = TruncationStats()
    cut = formatting.format_generative_prompts(tok, prompts, 12, stats)
    assert all(len(ids) <= 12 for ids in cut)
    assert stats.prompt_cut == stats.truncated == sum(len(ids) > 12 for ids in out)
    assert stats.tokens_removed == sum(len(a) - len(b) for a, b in zip(out, cut))
    for full, short in zip(out, cut):  # head and tail markers stay
        assert short[:2] == full[:2] and short[-3:] == full[-3:]


def test_embedding_text_tail_is_cut(tok, fmt):
    text = "\n\nred shoe and blue Quick item 12345"
    full, prefix_len = fmt.format_embedding("Represent the item.", text)
    stats = TruncationStats()
    ids, n = fmt.format_embedding("Represent the item.", text, prefix_len + 2, stats)
    assert ids == full[: prefix_len + 2] and n == prefix_len
    assert (stats.rows, stats.truncated, stats.text_cut, stats.instruction_cut) == (1, 1, 1, 0)
    assert stats.tokens_removed == len(full) - len(ids) and stats.boundary_tokens == 1


def test_a_long_instruction_is_cut_and_the_row_encoded_again(tok, fmt, ref):
    instruction, text = "Represent " + "the red Quick item. " * 20 + "for retrieval.", " red shoe"
    stats = TruncationStats()
    ids, prefix_len = fmt.format_embedding(instruction, text, 24, stats)
    assert len(ids) <= 24 and prefix_len < len(ids) and prefix_len >= 23
    decoded = tok.decode(ids[1:prefix_len])
    assert decoded.startswith("<|user|>\nRepresent the") and decoded.endswith("\n<|embed|>\n")
    shortened = BOS + decoded + text
    assert ids == _reference(ref, shortened)[0][: len(ids)]  # the shortened string's own tokens
    assert (stats.instruction_cut, stats.text_cut, stats.truncated) == (1, 1, 1)
    # No room for any instruction token: the instruction-less format; no room for it either: an error.
    head = 1 + len(tok.encode("<|embed|>\n"))
    ids, prefix_len = fmt.format_embedding(instruction, text, head + 1)
    assert tok.decode(ids[1:prefix_len]) == "<|embed|>\n" and len(ids) == head + 1
    with pytest.raises(ValueError, match="too short"):
        fmt.format_embedding(instruction, text, head)


def test_random_truncation_keeps_max_len_and_counts_the_cuts(tok, fmt):
    rng = random.Random(3)
    totals = TruncationStats()
    for _ in range(100):
        pairs = [(_instruction(rng) * rng.randint(1, 4), _text(rng) * rng.randint(1, 4)) for _ in range(5)]
        max_len = rng.randint(12, 40)
        full = fmt.embedding_many(pairs)
        stats = TruncationStats()
        cut = fmt.embedding_many(pairs, max_len, stats)
        totals.merge(stats)
        assert all(len(ids) <= max_len and prefix_len <= len(ids) for ids, prefix_len in cut)
        over = [len(ids) > max_len for ids, _ in full]
        assert stats.truncated == sum(over) and stats.text_cut + stats.instruction_cut >= sum(over)
        assert stats.tokens_removed == sum(len(a) - len(b) for (a, _), (b, _) in zip(full, cut))
        for (a, n_a), (b, n_b), is_over in zip(full, cut, over):
            assert n_b < len(b) or n_a == len(a)  # a text token stays, unless the prefix's last token took the text
            if not is_over:
                assert (a, n_a) == (b, n_b)
            elif n_b == n_a:  # the text's tail cut
                assert b == a[: len(b)]

        conversations = [[(p * rng.randint(1, 6), a * rng.randint(1, 4)) for p, a in _conversation(rng)]
                         for _ in range(5)]
        max_len = rng.randint(24, 60)
        full = fmt.generative_many(conversations)
        stats = TruncationStats()
        cut = fmt.generative_many(conversations, max_len, stats)
        totals.merge(stats)
        assert all(len(ids) <= max_len and len(ids) == len(labels) for ids, labels in cut)
        assert all(labels[-1] != IGNORE_INDEX for _, labels in cut)  # the last answer's head always stays
        over = [len(ids) > max_len for ids, _ in full]
        assert stats.truncated == sum(over)
        assert stats.tokens_removed == sum(len(a) - len(b) for (a, _), (b, _) in zip(full, cut))
        assert [a for a, o in zip(full, over) if not o] == [b for b, o in zip(cut, over) if not o]
    cuts = ("text_cut", "instruction_cut", "turns_dropped", "prompt_cut", "answer_cut")
    assert all(getattr(totals, name) > 0 for name in cuts), totals  # every rule was exercised


def test_old_turns_are_dropped_then_the_prompt_cut_in_its_middle(tok, fmt):
    turns = [("old question " * 30, "old answer"), ("\nnew question.", " new answer")]
    stats = TruncationStats()
    ids, labels = fmt.format_generative(turns, 40, stats)
    assert (ids, labels) == fmt.format_generative([turns[1]])  # encoded again as a first turn
    assert (stats.turns_dropped, stats.prompt_cut, stats.answer_cut) == (1, 0, 0)

    prompt = "Instruction: pick the next item. Input: " + " ".join(f"item{i}" for i in range(80)) + " Response:"
    full, full_labels = fmt.format_generative([(prompt, "B")])
    stats = TruncationStats()
    ids, labels = fmt.format_generative([(prompt, "B")], 48, stats)
    n_answer = sum(label != IGNORE_INDEX for label in full_labels)
    assert len(ids) == 48 and labels[-n_answer:] == full_labels[-n_answer:] and ids[-n_answer:] == full[-n_answer:]
    assert ids[:12] == full[:12] and ids[-12:] == full[-12:]  # the instruction and "Response:" stay
    assert (stats.prompt_cut, stats.answer_cut, stats.truncated) == (1, 0, 1)

    answer = "The user likes " + "outdoor gear and " * 40
    full, full_labels = fmt.format_generative([("Describe the user. " * 20, answer)])
    ids, labels = fmt.format_generative([("Describe the user. " * 20, answer)], 60, stats)
    first = next(i for i, label in enumerate(full_labels) if label != IGNORE_INDEX)
    kept = [x for x in labels if x != IGNORE_INDEX]
    assert len(ids) == 60 and kept == full[first: first + len(kept)] and stats.answer_cut == 1


def test_a_tokenizer_without_offsets_that_merges_newlines_is_refused(tok):
    class NoOffsets:
        path, bos_id, eos_id = tok.path, tok.bos_id, tok.eos_id
        encode = staticmethod(tok.encode)
        encode_batch = staticmethod(tok.encode_batch)

    with pytest.raises(ValueError, match="gives no offsets"):
        Formatter(NoOffsets())


def test_tokenize_split_on_the_synthetic_dataset(tmp_path, tok):
    data = tmp_path / "data"
    synthetic.ensure_dataset(data)
    lengths = dict(query_max_len=32, passage_max_len=48, generative_max_len=96)
    split = hf_tokenize.tokenize_split(data, "valid", tok, cache_dir=tmp_path / "cache", **lengths)
    emb, gen = split.embedding, split.generative
    assert len(emb) > 0 and len(gen) > 0
    seq_lengths = emb.seqs.lengths
    assert (emb.prefix_lens < seq_lengths).all()
    assert max(seq_lengths[emb.query]) <= 32 and max(seq_lengths) <= 48
    assert gen.seqs.lengths.max() <= 96
    assert all(gen.loss_mask[gen.seqs.offsets[i]: gen.seqs.offsets[i + 1]].any() for i in range(len(gen)))
    assert split.stats["generative"].truncated > 0 and split.stats["generative"].rows == len(gen)
    again = hf_tokenize.tokenize_split(data, "valid", tok, cache_dir=tmp_path / "cache", **lengths)
    assert again.generative.seqs.data.tolist() == gen.seqs.data.tolist()
