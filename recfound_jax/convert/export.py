"""Export one task of a run as a plain HF Mistral checkpoint: no adapter code needed to serve it.

    python -m recfound_jax.convert.export --run RUN_DIR --task NAME [--step N] --out DIR

The task's gate is fixed, so its gated expert bank folds into one dense delta per projection and
layer (W0 + ΔW_t, `model.hf.save_hf(model, DIR, task=...)`). DIR gets config.json and safetensors that
transformers' MistralForCausalLM loads, the run's tokenizer.model, and a README.md naming the task,
run and step and giving the exact prompt format (and, for embedding tasks, the pooling and the
attention mask the export needs).
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from recfound_jax import cli
from recfound_jax.convert.hf import save_hf
from recfound_jax.data.formatting import INSTRUCTION_STRIP
from recfound_jax.runs import rundir
from recfound_jax.tasks import TASKS, Task, get_task

README = "README.md"
TOKENIZER = "tokenizer.model"


def _generative_section() -> str:
    return """## Prompt format (generative task)

Token ids: BOS (id 1), then the SentencePiece encoding of the plain text

    <|user|>\\n{prompt}\\n<|assistant|>\\n

that is, the whole string `<s><|user|>\\n{prompt}\\n<|assistant|>\\n` with `<s>` as the BOS id, not as
text. `<|user|>` and `<|assistant|>` are ordinary text (they are not in the vocabulary as special
tokens). `{prompt}` is the task's full instruction text as in the RecFound data (the Alpaca-style
"Below is an instruction ... Response:" block), not stripped. Decode greedily and stop at EOS
(`</s>`, id 2). Causal attention, as any HF server runs it.
"""


def _embedding_section() -> str:
    strip = repr(INSTRUCTION_STRIP)
    return f"""## Input format (embedding task)

Token ids: BOS (id 1), then the SentencePiece encoding of the plain text

    <|user|>\\n{{instruction}}\\n<|embed|>\\n{{text}}

that is, `<s><|user|>\\n{{instruction}}\\n<|embed|>\\n{{text}}` with `<s>` as the BOS id; no EOS.
The instruction is stripped of the characters {strip} at both ends; with an empty instruction the
input is `<s><|embed|>\\n{{text}}`. `<|user|>` and `<|embed|>` are ordinary text.

The embedding is the mean of the final hidden states (after the final RMSNorm: `MistralModel`'s
`last_hidden_state`) over the **text tokens only**: leave out BOS and every token up to and
including the newline after `<|embed|>` (the prefix has 1 + len(encode(prefix string)) tokens,
since the newline is a byte token that no merge crosses), then L2-normalise. Compare embeddings by
cosine similarity (a dot product of the normalised vectors).

**Attention must be bidirectional.** The model was trained to embed with every token attending to
every real token of its input, but HF `MistralModel` / `MistralForCausalLM` build a causal mask.
Pass a prepared 4D additive mask instead of the usual 2D one: shape [batch, 1, T, T], 0.0 where the
key position is a real token and `torch.finfo(dtype).min` where it is padding (transformers 5 uses a
4D mask as given, with the eager and sdpa attention; checked against recfound_jax with transformers
5.24). A server that cannot take a custom mask (vLLM, TGI) gives causal embeddings that do not match
what the model was trained on.

```python
import sentencepiece as spm, torch, transformers

sp = spm.SentencePieceProcessor(model_file="tokenizer.model")
model = transformers.MistralModel.from_pretrained(".").eval()  # this folder
instruction, text = "...", "..."
instruction = instruction.strip({strip})
prefix = f"<|user|>\\n{{instruction}}\\n<|embed|>\\n" if instruction else "<|embed|>\\n"
ids = [1] + sp.encode(prefix + text)
start = 1 + len(sp.encode(prefix))
x = torch.tensor([ids])
mask = torch.zeros(1, 1, len(ids), len(ids))  # one unpadded row: every position attends everywhere
hidden = model(input_ids=x, attention_mask=mask).last_hidden_state[0, start:]
embedding = torch.nn.functional.normalize(hidden.mean(0), dim=-1)
```
"""


def readme_text(task: Task, run_dir: Path, step: int | None, config_name: str, dtype: str) -> str:
    """The README.md of an export: the task, where it came from, and how to feed the model."""
    kind = "embedding" if task.is_embedding else "generative"
    section = _embedding_section() if task.is_embedding else _generative_section()
    return f"""# RecFound task export: {task.name} ({task.short}, {kind})

A plain Mistral checkpoint for one RecFound task: the task's mixture of LoRA experts (TMoLE) is folded
into the q, k, v and o weights of every layer (W0 + (alpha / r) * sum_j gate_j B_j A_j with the task's
gate), so it runs with no adapter code.

- task: `{task.name}` (id {task.id}, short name {task.short}, {kind}, metric {task.metric})
- run: `{run_dir}` (config name `{config_name}`)
- step: {step}
- weights dtype: {dtype}
- files: config.json and *.safetensors (transformers `MistralForCausalLM`), {TOKENIZER} (SentencePiece,
  the run's tokenizer), this README

Tokenize with SentencePiece (or mistral-common) on {TOKENIZER}; do not build a HF fast tokenizer from the
file alone (transformers 5 makes a wrong vocabulary from `LlamaTokenizerFast(vocab_file=...)`).

{section}
Other tasks need their own export: the gate, and so the folded weights, differ per task.
"""


def export_task(run_dir: str | os.PathLike, task: str | int, out: str | os.PathLike, step: int | None = None) -> Path:
    """Write ``out``: run ``run_dir``'s model at ``step`` (default: the latest) with ``task`` folded in.

    ``out`` gets HF config.json + safetensors (`save_hf(model, out, task=...)`), the run's tokenizer as
    tokenizer.model and README.md. Raises KeyError for an unknown task, FileExistsError when ``out``
    is not empty.
    """
    run_dir, out = Path(run_dir).absolute(), Path(out).absolute()
    resolved = get_task(task)
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} already exists and is not empty; choose another --out")
    model, config, step = rundir.load_model(run_dir, step)
    save_hf(model, out, task=resolved.name)
    tokenizer = rundir.read_run_info(run_dir).get("tokenizer")
    if not tokenizer or not Path(tokenizer).is_file():
        raise FileNotFoundError(f"{run_dir}: run.json names tokenizer {tokenizer!r}, which is not a file")
    shutil.copyfile(tokenizer, out / TOKENIZER)
    dtype = str(model.embed[...].dtype)
    (out / README).write_text(readme_text(resolved, run_dir, step, config.name, dtype), encoding="utf-8")
    return out


def _known_task(task: str) -> bool:
    try:
        get_task(task)
    except KeyError as err:
        raise flags.ValidationError(str(err.args[0])) from None
    return True


FLAGS = flags.FlagValues()
_RUN = flags.DEFINE_string("run", None, "the run directory", required=True, flag_values=FLAGS)
_TASK = flags.DEFINE_string("task", None, f"task name or short name: {', '.join(t.name for t in TASKS)}",
                            required=True, flag_values=FLAGS)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "output directory (must not exist or be empty)", required=True,
                           flag_values=FLAGS)
flags.register_validator("task", _known_task, flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Export and print where the files are."""
    cli.parse(FLAGS, argv, __doc__)

    def export() -> str:
        out = export_task(_RUN.value, _TASK.value, _OUT.value, step=_STEP.value)
        return f"exported {get_task(_TASK.value).name} of {_RUN.value} to {out}"

    return cli.attempt(export, FileNotFoundError, FileExistsError)


if __name__ == "__main__":
    cli.run(main)
