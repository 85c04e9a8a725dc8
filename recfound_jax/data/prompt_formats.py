"""How a generative prompt is wrapped for the model: the training format, or a chat model's own.

- ``gritlm`` (the default, and what RecFound trains on): ``<s><|user|>\\n{prompt}\\n<|assistant|>\\n``
  (`formatting.format_generative_prompts`).
- ``mistral-instruct``: ``<s>[INST]{prompt}[/INST]`` with the v3 tokenizer's ``[INST]`` and ``[/INST]``
  control tokens, as mistral-common encodes a one-message chat: the paper's zero-shot rows of
  Mistral-7B-Instruct-v0.3 (Appendix B.1, "w/o finetuning").
- ``llama3``: Llama-3-8B-Instruct's chat template for one user message and the generation prompt,
  ``<|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\n{prompt, stripped}<|eot_id|>``
  ``<|start_header_id|>assistant<|end_header_id|>\\n\\n``.
- ``qwen``: Qwen2.5-Instruct's, with its default system message,
  ``<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n``
  ``<|im_start|>user\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n``.
The markers are the tokenizer's own special tokens (ids, never parsed out of text); the text between two
markers is encoded on its own, as a tokenizer.json splits a whole string at its added tokens first
(tests/test_prompt_formats.py checks both chat formats against transformers' `apply_chat_template`).
"""
from __future__ import annotations

from collections.abc import Sequence

from recfound_jax.data import formatting
from recfound_jax.tokenizer import TextTokenizer

Ids = list[int]
PROMPT_FORMATS = ("gritlm", "mistral-instruct", "llama3", "qwen")
MISTRAL_INSTRUCT_MARKERS = ("[INST]", "[/INST]")
QWEN_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
_NEEDS = {"mistral-instruct": "a Mistral instruct vocabulary (v3)", "llama3": "a Llama-3 tokenizer.json",
          "qwen": "a Qwen2.5 tokenizer.json"}


def prompt_ids(tokenizer: TextTokenizer, prompts: Sequence[str], prompt_format: str = "gritlm",
               max_len: int | None = None) -> list[Ids]:
    """Model inputs of ``prompts`` in ``prompt_format`` (one of `PROMPT_FORMATS`), each cut in its middle
    to ``max_len`` tokens when longer."""
    if prompt_format == "gritlm":
        return formatting.format_generative_prompts(tokenizer, prompts, max_len)
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt format {prompt_format!r} is not one of {PROMPT_FORMATS}")
    marker = lambda piece: _control_id(tokenizer, piece, prompt_format)
    if prompt_format == "mistral-instruct":
        head, tail = [tokenizer.bos_id, marker("[INST]")], [marker("[/INST]")]
        return formatting.wrap_prompts(tokenizer.encode_batch(prompts), head, tail, max_len)
    if prompt_format == "llama3":
        head = [marker("<|begin_of_text|>"), marker("<|start_header_id|>"), *tokenizer.encode("user"),
                marker("<|end_header_id|>")]
        tail = [marker("<|eot_id|>"), marker("<|start_header_id|>"), *tokenizer.encode("assistant"),
                marker("<|end_header_id|>"), *tokenizer.encode("\n\n")]
        bodies = tokenizer.encode_batch(["\n\n" + prompt.strip() for prompt in prompts])
        return formatting.wrap_prompts(bodies, head, tail, max_len)
    start, end = marker("<|im_start|>"), marker("<|im_end|>")
    head = [start, *tokenizer.encode(f"system\n{QWEN_SYSTEM}"), end, *tokenizer.encode("\n"), start]
    tail = [end, *tokenizer.encode("\n"), start, *tokenizer.encode("assistant\n")]
    return formatting.wrap_prompts(tokenizer.encode_batch(["user\n" + prompt for prompt in prompts]), head, tail,
                                   max_len)


def _control_id(tokenizer: TextTokenizer, piece: str, prompt_format: str) -> int:
    token = tokenizer.piece_id(piece)
    if token is None:
        raise ValueError(f"the tokenizer {tokenizer.path} has no {piece} token: the {prompt_format} prompt format "
                         f"needs {_NEEDS[prompt_format]}")
    return token
