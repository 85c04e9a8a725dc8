"""Prompt formats for generation: the mistral-instruct chat equals mistral-common's own encoding of a
one-message chat with the v3 tokenizer; long prompts are cut in the middle; other vocabularies refuse it."""
from __future__ import annotations

import pytest
import transformers
from mistral_common.protocol.instruct.messages import UserMessage
from mistral_common.protocol.instruct.request import ChatCompletionRequest
from mistral_common.tokens.tokenizers.mistral import MistralTokenizer

from recfound_jax.data import formatting, instructions
from recfound_jax.data.prompt_formats import prompt_ids
from recfound_jax.demo import synthetic, vocabulary
from recfound_jax.tokenizer import Tokenizer, load_tokenizer
from tests.bpe_fixtures import LLAMA3_SPECIALS, QWEN_SPECIALS, byte_level_bpe, write_tokenizer

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
        prompt_ids(Tokenizer(), PROMPTS, "chatml")
    with pytest.raises(ValueError, match=r"has no <\|begin_of_text\|> token: the llama3 prompt format needs"):
        prompt_ids(Tokenizer(), PROMPTS, "llama3")


# The chat templates as the models' tokenizer_config.json files ship them (Meta-Llama-3-8B-Instruct,
# Qwen2.5-7B-Instruct; Qwen's tool-calling branch left out): the reference the formats are checked against.
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
QWEN_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}"
    "{%- else %}{{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant."
    "<|im_end|>\n' }}{%- endif %}{%- for message in messages %}{%- if (message.role == 'user') or "
    "(message.role == 'system' and not loop.first) %}{{- '<|im_start|>' + message.role + '\n' + message.content + "
    "'<|im_end|>' + '\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}"
    "{%- endif %}")
CHAT_SPECIALS = {"llama3": LLAMA3_SPECIALS, "qwen": QWEN_SPECIALS}


@pytest.fixture(scope="module", params=["llama3", "qwen"])
def chat_checkpoint(request, tmp_path_factory):
    """(format, folder with a byte-level BPE tokenizer.json trained here, with the model's special tokens)."""
    specials = CHAT_SPECIALS[request.param]
    tok = byte_level_bpe([*PROMPTS, "system user assistant You are Qwen, created by Alibaba Cloud."] * 5, specials, 600)
    folder = write_tokenizer(tmp_path_factory.mktemp(request.param), tok, bos_token=specials[0], eos_token=specials[-1])
    return request.param, folder


def test_chat_formats_equal_transformers_chat_templates(chat_checkpoint):
    prompt_format, folder = chat_checkpoint
    template = LLAMA3_TEMPLATE if prompt_format == "llama3" else QWEN_TEMPLATE
    reference = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                                     bos_token=CHAT_SPECIALS[prompt_format][0])
    ours = prompt_ids(load_tokenizer(folder), PROMPTS + ["  a prompt with spaces around  "], prompt_format)
    for prompt, ids in zip(PROMPTS + ["  a prompt with spaces around  "], ours):
        text = reference.apply_chat_template([{"role": "user", "content": prompt}], chat_template=template,
                                             add_generation_prompt=True, tokenize=False)
        assert ids == reference(text, add_special_tokens=False)["input_ids"], text
    cut, = prompt_ids(load_tokenizer(folder), PROMPTS[:1], prompt_format, max_len=40)
    assert len(cut) == 40 and cut[-8:] == ours[0][-8:]
