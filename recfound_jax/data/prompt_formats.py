"""How a generative prompt is wrapped for the model: the training format, or a chat model's own.

- ``gritlm`` (the default, and what RecFound trains on): ``<s><|user|>\\n{prompt}\\n<|assistant|>\\n``
  (`formatting.format_generative_prompts`).
- ``mistral-instruct``: ``<s>[INST]{prompt}[/INST]`` with the v3 tokenizer's ``[INST]`` and ``[/INST]``
  control tokens, as mistral-common encodes a one-message chat: the paper's zero-shot rows of
  Mistral-7B-Instruct-v0.3 (Appendix B.1, "w/o finetuning").

Llama-3's and Qwen's chat formats are not written here: their tokenizer.json files load
(`recfound_jax.tokenizer.load_tokenizer`), but the model is Mistral's.
"""
from __future__ import annotations

from collections.abc import Sequence

from recfound_jax.data import formatting
from recfound_jax.tokenizer import TextTokenizer

Ids = list[int]
PROMPT_FORMATS = ("gritlm", "mistral-instruct")
MISTRAL_INSTRUCT_MARKERS = ("[INST]", "[/INST]")


def prompt_ids(tokenizer: TextTokenizer, prompts: Sequence[str], prompt_format: str = "gritlm",
               max_len: int | None = None) -> list[Ids]:
    """Model inputs of ``prompts`` in ``prompt_format`` (one of `PROMPT_FORMATS`), each cut in its middle
    to ``max_len`` tokens when longer."""
    if prompt_format == "gritlm":
        return formatting.format_generative_prompts(tokenizer, prompts, max_len)
    if prompt_format == "mistral-instruct":
        begin, end = (_control_id(tokenizer, marker) for marker in MISTRAL_INSTRUCT_MARKERS)
        return formatting.wrap_prompts(tokenizer.encode_batch(prompts), [tokenizer.bos_id, begin], [end], max_len)
    raise ValueError(f"prompt format {prompt_format!r} is not one of {PROMPT_FORMATS}")


def _control_id(tokenizer: TextTokenizer, piece: str) -> int:
    token = tokenizer.piece_id(piece)
    if token is None:
        raise ValueError(f"the tokenizer {tokenizer.path} has no {piece} token: the mistral-instruct prompt format "
                         "needs a Mistral instruct vocabulary (v3)")
    return token
