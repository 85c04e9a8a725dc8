"""GritLM formats, labels, prefix lengths, truncation and tokenized tables: data/formatting.py.

References: the SentencePiece model itself, encoding the whole formatted string in one call.
"""
from __future__ import annotations

import random

import numpy as np
import pytest

from recfound_jax.data import formatting, records
from recfound_jax.data.formatting import IGNORE_INDEX, Formatter, TruncationStats
from recfound_jax.data.records import EmbeddingRecord, GenerativeRecord
from recfound_jax.tokenizer import Tokenizer


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return Tokenizer()


@pytest.fixture(scope="module")
def fmt(tok) -> Formatter:
    return Formatter(tok)


def _random_text(rng: random.Random) -> str:
    pieces = ["shoe", " red", "  ", "\n", "\t", "é", "日本", "🙂", "The", " Quick", "<|", "|>", ".", ":", "\u00a0",
              "Option A", " B.", "\n\n", "12", "$"]
    return "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))


def test_embedding_with_instruction_equals_whole_string(tok, fmt):
    ids, prefix_len = fmt.format_embedding(" Represent this user for retrieval: \n", "bought running shoes")
    prefix = "<|user|>\nRepresent this user for retrieval\n<|embed|>\n"
    assert ids == [tok.bos_id] + tok.encode(prefix + "bought running shoes")
    assert prefix_len == 1 + len(tok.encode(prefix))
    assert tok.decode(ids[prefix_len:]) == "bought running shoes"


def test_embedding_without_instruction(tok, fmt):
    for instruction in ("", " :\t\n"):
        ids, prefix_len = fmt.format_embedding(instruction, "garden hose")
        assert ids == [tok.bos_id] + tok.encode("<|embed|>\ngarden hose")
        assert prefix_len == 1 + len(tok.encode("<|embed|>\n"))


def test_random_texts_tokenize_as_the_whole_string(tok, fmt):
    rng = random.Random(0)
    for _ in range(300):
        instr, text, prompt, answer = (_random_text(rng) for _ in range(4))
        ids, prefix_len = fmt.format_embedding(instr, text)
        stripped = instr.strip("\t\n :")
        prefix = f"<|user|>\n{stripped}\n<|embed|>\n" if stripped else "<|embed|>\n"
        assert ids == [tok.bos_id] + tok.encode(prefix + text)
        assert prefix_len == 1 + len(tok.encode(prefix))
        if not answer.strip():
            continue
        ids, labels = fmt.format_generative([(prompt, answer)])
        head = f"<|user|>\n{prompt}\n<|assistant|>\n"
        assert ids == [tok.bos_id] + tok.encode(head + answer.strip()) + [tok.eos_id]
        n_prompt = 1 + len(tok.encode(head))
        assert labels == [IGNORE_INDEX] * n_prompt + ids[n_prompt:]


def test_generative_single_turn_by_hand(tok, fmt):
    ids, labels = fmt.format_generative([("Is the review positive? Options: A. yes B. no", "  A ")])
    head = tok.encode("<|user|>\nIs the review positive? Options: A. yes B. no\n<|assistant|>\n")
    answer = tok.encode("\nA")[len(tok.encode("\n")):]  # "A" as it follows the newline
    assert ids == [tok.bos_id] + head + answer + [tok.eos_id]
    assert labels == [IGNORE_INDEX] * (1 + len(head)) + answer + [tok.eos_id]


def test_generative_multi_turn(tok, fmt):
    ids, labels = fmt.format_generative([("first question", "first answer"), ("second question", "second")])
    turn1 = tok.encode("<|user|>\nfirst question\n<|assistant|>\nfirst answer")
    head1 = tok.encode("<|user|>\nfirst question\n<|assistant|>\n")
    turn2 = tok.encode("\n<|user|>\nsecond question\n<|assistant|>\nsecond")
    head2 = tok.encode("\n<|user|>\nsecond question\n<|assistant|>\n")
    boundary = tok.encode("\n")[0]  # the word-boundary piece SentencePiece puts before a leading newline
    assert turn2[0] == head2[0] == boundary
    turn2, head2 = turn2[1:], head2[1:]
    assert ids == [tok.bos_id] + turn1 + [tok.eos_id] + turn2 + [tok.eos_id]
    expected = ([IGNORE_INDEX] * (1 + len(head1)) + turn1[len(head1):] + [tok.eos_id]
                + [IGNORE_INDEX] * len(head2) + turn2[len(head2):] + [tok.eos_id])
    assert labels == expected
    assert sum(label != IGNORE_INDEX for label in labels) == (len(turn1) - len(head1)) + (len(turn2) - len(head2)) + 2


def test_embedding_text_tail_is_cut(tok, fmt):
    full, prefix_len = fmt.format_embedding("Represent the item", "one two three four five six seven")
    stats = TruncationStats()
    ids, n = fmt.format_embedding("Represent the item", "one two three four five six seven", prefix_len + 3, stats)
    assert ids == full[: prefix_len + 3] and n == prefix_len
    assert (stats.rows, stats.truncated, stats.text_cut, stats.instruction_cut) == (1, 1, 1, 0)
    assert stats.tokens_removed == len(full) - len(ids)


def test_long_instruction_is_cut_but_embed_marker_and_one_text_token_stay(tok, fmt):
    instruction = "Represent " + "very " * 60 + "long instruction"
    stats = TruncationStats()
    ids, prefix_len = fmt.format_embedding(instruction, "red running shoe", 30, stats)
    marker = tok.encode("\n<|embed|>\n")[1:]  # "\n<|embed|>\n" after an instruction
    text = tok.encode("\nred running shoe")[2:]
    assert len(ids) == 30 and prefix_len == 29
    assert ids[:1 + len(fmt.user_first)] == [tok.bos_id] + tok.encode("<|user|>\n")
    assert ids[prefix_len - len(marker): prefix_len] == marker
    assert ids[prefix_len:] == text[:1]
    assert (stats.instruction_cut, stats.text_cut) == (1, 1)
    # No room for any instruction token: the instruction-less format.
    ids, prefix_len = fmt.format_embedding(instruction, "red running shoe", 10)
    assert ids[:prefix_len] == [tok.bos_id] + tok.encode("<|embed|>\n") and len(ids) == 10
    with pytest.raises(ValueError, match="too short"):
        fmt.format_embedding(instruction, "red running shoe", 5)


def test_long_prompt_is_cut_in_its_middle_and_the_answer_kept(tok, fmt):
    prompt = "Instruction: pick the next item. Input: " + " ".join(f"item{i}" for i in range(200)) + " Response:"
    full, full_labels = fmt.format_generative([(prompt, "B")])
    stats = TruncationStats()
    ids, labels = fmt.format_generative([(prompt, "B")], 64, stats)
    assert len(ids) == 64
    n_answer = sum(label != IGNORE_INDEX for label in full_labels)
    assert labels[-n_answer:] == full_labels[-n_answer:] and ids[-n_answer:] == full[-n_answer:]
    tail = len(fmt.assistant) + n_answer
    head = 1 + len(fmt.user_first)
    content = 64 - head - tail
    assert ids[:head + content // 2] == full[:head + content // 2]  # the instruction stays
    assert ids[-(tail + content - content // 2):] == full[-(tail + content - content // 2):]  # "Response:" stays
    assert (stats.prompt_cut, stats.answer_cut, stats.truncated) == (1, 0, 1)
    assert stats.tokens_removed == len(full) - 64


def test_long_answer_keeps_its_head_and_half_the_room_goes_to_the_prompt(tok, fmt):
    prompt, answer = "Describe the user. " * 20, "The user likes " + "outdoor gear and " * 100
    full, full_labels = fmt.format_generative([(prompt, answer)])
    stats = TruncationStats()
    ids, labels = fmt.format_generative([(prompt, answer)], 100, stats)
    first_answer = full_labels.index(next(x for x in full_labels if x != IGNORE_INDEX))
    kept_answer = [x for x in labels if x != IGNORE_INDEX]
    assert len(ids) == 100 and kept_answer == full[first_answer: first_answer + len(kept_answer)]
    room = 100 - 1 - len(fmt.user_first) - len(fmt.assistant)
    assert len(kept_answer) == room - room // 2
    assert (stats.prompt_cut, stats.answer_cut) == (1, 1)


def test_old_turns_are_dropped_first(tok, fmt):
    turns = [("old question " * 30, "old answer"), ("new question", "new answer")]
    stats = TruncationStats()
    ids, labels = fmt.format_generative(turns, 40, stats)
    assert (ids, labels) == fmt.format_generative([turns[1]])
    assert (stats.turns_dropped, stats.prompt_cut, stats.answer_cut) == (1, 0, 0)


def test_batched_helpers_match_single_rows(tok, fmt):
    pairs = [("Represent the query", "cheap shoes"), ("", "hose"), ("Represent the query", "red hat")]
    stats = TruncationStats()
    assert fmt.embedding_many(pairs, 12, stats) == [fmt.format_embedding(i, t, 12) for i, t in pairs]
    assert stats.rows == 3
    convs = [[("q1", "a1")], [("q2", "a2"), ("q3", "a3")]]
    assert fmt.generative_many(convs, 30) == [fmt.format_generative(c, 30) for c in convs]
    assert formatting.format_embedding(tok, *pairs[0]) == fmt.format_embedding(*pairs[0])
    assert formatting.format_generative(tok, convs[1]) == fmt.format_generative(convs[1])


def _records() -> list[records.Record]:
    return [
        EmbeddingRecord("Emb_user", 0, ("Represent the user", "likes shoes"),
                        (("Item", "shoe"), ("Item", "boot")), (("Item", "hat"),)),
        GenerativeRecord("Sentiment_Analysis", 6, (("Rate: nice", "E"),)),
        EmbeddingRecord("Emb_item", 2, ("", "garden hose " * 40), (("Item", "watering can"),), ()),
        GenerativeRecord("Answer_Generation", 12, (("q1", "a1"), ("q2", "a long answer " * 30))),
    ]


def test_tokenize_records_tables(tok, fmt):
    split = formatting.tokenize_records(_records(), tok, query_max_len=24, passage_max_len=32, generative_max_len=48)
    emb, gen = split.embedding, split.generative
    assert len(emb) == 2 and len(gen) == 2 and emb.seqs.data.dtype == np.uint16
    assert emb.task_ids.tolist() == [0, 2] and gen.task_ids.tolist() == [6, 12]
    row_q = fmt.format_embedding("Represent the user", "likes shoes", 24)
    assert emb.seqs.row(int(emb.query[0])).tolist() == row_q[0] and emb.prefix_lens[emb.query[0]] == row_q[1]
    assert [emb.seqs.row(int(i)).tolist() for i in emb.pos.row(0)] == [
        fmt.format_embedding("Item", t, 32)[0] for t in ("shoe", "boot")]
    assert emb.seqs.row(int(emb.neg.row(0)[0])).tolist() == fmt.format_embedding("Item", "hat", 32)[0]
    assert len(emb.neg.row(1)) == 0 and len(emb.seqs.row(int(emb.query[1]))) == 24
    ids, labels = fmt.format_generative(_records()[3].turns, 48)
    assert gen.seqs.row(1).tolist() == ids and gen.labels(1).tolist() == labels
    assert (split.stats["query"].truncated, split.stats["query"].instruction_cut) == (1, 0)
    assert split.stats["passage"].truncated == 0 and split.stats["generative"].truncated == 1


def test_repeated_passages_are_stored_once(tok):
    shared = ("Item", "watering can")
    rows = [EmbeddingRecord("Emb_item", 2, ("", "hose"), (shared,), (("Item", "hat"),)),
            EmbeddingRecord("Emb_user", 0, ("Represent", "user"), (("Item", "boot"),), (shared,))]
    split = formatting.tokenize_records(rows, tok, query_max_len=24, passage_max_len=32, generative_max_len=48)
    emb = split.embedding
    assert emb.pos.row(0)[0] == emb.neg.row(1)[0]
    assert len(emb.seqs) == 2 + 3 and split.stats["passage"].rows == 3


def test_ragged_pack_and_concat():
    a = formatting.Ragged.from_rows([[1, 2], [], [3]], np.int32)
    b = formatting.Ragged.from_rows([[4, 5, 6]], np.int32)
    c = formatting.Ragged.concat([a, b], np.int32)
    assert [c.row(i).tolist() for i in range(len(c))] == [[1, 2], [], [3], [4, 5, 6]]
    assert c.lengths.tolist() == [2, 0, 1, 3]
