"""The demo's base model: a tiny Mistral with the real Mistral v3 tokenizer, pretrained on the CPU.

`python -m recfound_jax.demo.pretrain --config demo_base [--config.key=value ...]`

Stage 1, causal LM: all weights trained on the synthetic world's plain-text corpus (listings, reviews,
shopping facts, train users' histories) plus ``data.generative_rows_per_task`` generative rows per task
from the synthetic TRAIN split, written as plain text "prompt\\nanswer". Those rows teach the base the
Alpaca prompt template and the answer formats; no valid or test row is trained on. Set it to 0 for a base
that has seen the world corpus only. ``data.eval_rows_per_task`` VALID rows per task give a held-out loss
before and after training, reported in pretrain_log.json.

Stage 2, instruction (``instruct``, recfound_jax/demo/instruct.py): all weights trained on the answer
tokens of fresh train-side rows of AP, PRP, SA and AVE in the finetuning's format (rows whose input is a
valid or test row's input are dropped), the way an instruction-tuned Mistral can compare two texts and
copy a value out of a listing before RecFound finetunes it. Without it the finetuning's attention adapters
never learn AP's or PRP's comparisons nor AVE's copying in the demo. The rows per task were chosen by
measurement; SA's rows keep the answer letters D and E in use.

Cost on CPU: stage 1 is dominated by the LM head over the 32768-token vocabulary, so
``seq_len * batch_size`` stays near 1k tokens a step; stage 2 applies the LM head at the answer tokens
only. This recipe's times, losses and accuracies, and the experiments behind the mix: docs/results.md.
"""
from ml_collections import ConfigDict

from recfound_jax.config import demo_base_config


def get_config() -> ConfigDict:
    """The demo base-model recipe: the schema's defaults (every key, its default and its comment:
    recfound_jax.config.demo_base_config)."""
    return demo_base_config()
