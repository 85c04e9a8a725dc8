"""Prompt formats for generation: the mistral-instruct chat equals mistral-common's own encoding of a
one-message chat with the v3 tokenizer; long prompts are cut in the middle; other vocabularies refuse it."""
from __future__ import annotations

import pytest
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from recfound_jax.data import formatting, instructions
from recfound_jax.data.prompt_formats import prompt_ids
from recfound_jax.demo import synthetic, vocabulary
from recfound_jax.tokenizer import Tokenizer

PROMPTS = [
    instructions.alpaca("Given the user's review, identify the user's sentiment from the listed options.",
                     "Great kettle. Highly recommend!", synthetic.SA_OPTIONS),
    "Is this answerable? Output only yes or no.\n\n### Response:",
]


def test_mistral_instruct_equals_mistral_commons_chat_encoding():
    reference = MistralTokenizer.v3()
    ours = prompt_ids(Tokenizer(), PROMPTS, "mistral-instruct")
    for prompt, ids in zip(PROMPTS, ours):
        request = ChatCompletionRequest(messages=[UserMessage(content=prompt)])
        assert ids == reference.encode_chat_completion(request).tokens


def test_gritlm_is_the_training_format():
    tokenizer = Tokenizer()
    assert prompt_ids(tokenizer, PROMPTS) == formatting.format_generative_prompts(tokenizer, PROMPTS)


def test_a_long_prompt_keeps_its_head_and_tail():
    tokenizer = Tokenizer()
    full, = prompt_ids(tokenizer, PROMPTS[:1], "mistral-instruct")
    cut, = prompt_ids(tokenizer, PROMPTS[:1], "mistral-instruct", max_len=20)
    assert len(cut) == 20 and cut[:10] == full[:10] and cut[-10:] == full[-10:]


def test_a_vocabulary_without_inst_markers_is_refused(tmp_path):
    model = vocabulary.train_vocabulary([p for p in PROMPTS for _ in range(50)] + ["Product title"] * 50, 600,
                                        tmp_path / "v.model")
    with pytest.raises(ValueError, match=r"has no \[INST\] token"):
        prompt_ids(Tokenizer(model), PROMPTS, "mistral-instruct")
    with pytest.raises(ValueError, match="is not one of"):
        prompt_ids(Tokenizer(), PROMPTS, "llama3")
