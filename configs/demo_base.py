"""The demo's base model: a tiny Mistral with a vocabulary of its own, pretrained on the CPU.

`python -m recfound_jax.demo.pretrain --config demo_base [--config.key=value ...]`

Vocabulary (``model.tokenizer = "demo"``, recfound_jax/demo/vocabulary.py): ``model.vocab_size`` BPE
pieces trained by sentencepiece on the synthetic world's corpus and train split, with the Mistral v3
file's conventions. ``"mistral_v3"`` (with vocab_size 32768) takes the real v3 file instead.

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
never learn AP's or PRP's comparisons nor AVE's copying in the demo. SA's rows keep the answer letters D
and E in use. A first phase (``instruct.first``, off in the recipe) trains PRP's rows alone before the mix.
Whether the stage finds PRP's pair rule and AP's comparison within its budget depends on the draw and order
of its rows as much as on the world (docs/results.md, "The draw decides").

A run of ``python -m recfound_jax.train --config demo`` uses this recipe on its own synthetic world
(``data.synthetic_seed`` and ``data.synthetic_scale`` replace ``data.seed`` and ``data.scale``). Times,
losses and accuracies, and the experiments behind the mix: docs/results.md.
"""
from ml_collections import ConfigDict

from recfound_jax.config import demo_base_config


def get_config() -> ConfigDict:
    """The demo base-model recipe: the schema's defaults (every key, its default and its comment:
    recfound_jax.config.demo_base_config)."""
    return demo_base_config()
