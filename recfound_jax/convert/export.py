"""Export a run's tasks: as plain HF Mistral checkpoints, or as PEFT LoRA adapters over the run's base.

    python -m recfound_jax.convert.export --run RUN_DIR (--task NAME | --all_tasks) [--peft] [--step N] --out DIR

A task's gate is fixed, so its gated expert bank folds into one dense delta per projection and layer
(W0 + ΔW_t, `convert.hf.save_hf(model, DIR, task=...)`): DIR gets config.json and safetensors that
transformers' MistralForCausalLM loads. With ``--peft`` the bank becomes one LoRA instead
(`convert.peft_adapter`): DIR gets adapter_config.json and adapter_model.safetensors that
``peft.PeftModel.from_pretrained(base, DIR)`` and multi-LoRA servers load over the run's base. Either way
DIR also gets the run's tokenizer (tokenizer.model; or tokenizer.json and the tokenizer_config.json and
special_tokens_map.json beside it, when the run used its base's tokenizer.json) and a README.md naming the
task, run and step and giving the exact prompt format (and, for embedding tasks, the pooling and the
attention mask the model needs).
``--all_tasks`` writes one such folder per task of the run's table (the released 13 and its
config.added_tasks), DIR/<task name>; ``--task`` names a task of that table.
"""
from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from absl import flags

from recfound_jax import cli, jsonio
from recfound_jax import config as config_lib
from recfound_jax.convert import peft_adapter
from recfound_jax.convert.hf import FAMILIES, save_hf
from recfound_jax.data.formatting import INSTRUCTION_STRIP
from recfound_jax.runs import rundir
from recfound_jax.tasks import TASKS, Task
from recfound_jax.tokenizer import is_tokenizer_json
from recfound_jax.tokenizer_json import SPECIAL_TOKENS_MAP, TOKENIZER_CONFIG, TOKENIZER_FILE

README = "README.md"
TOKENIZER = "tokenizer.model"


def exported_tokenizer_name(tokenizer: Path) -> str:
    """The name a run's tokenizer file gets in an export: tokenizer.json for a tokenizer.json, else tokenizer.model."""
    return TOKENIZER_FILE if is_tokenizer_json(tokenizer) else TOKENIZER


def copy_tokenizer(tokenizer: Path, target: Path) -> None:
    """Copy a run's tokenizer file into ``target`` as `exported_tokenizer_name`; a tokenizer.json brings the
    tokenizer_config.json and special_tokens_map.json beside it (where its BOS/EOS/pad ids come from)."""
    shutil.copyfile(tokenizer, target / exported_tokenizer_name(tokenizer))
    if is_tokenizer_json(tokenizer):
        for name in (TOKENIZER_CONFIG, SPECIAL_TOKENS_MAP):
            if (tokenizer.parent / name).is_file():
                shutil.copyfile(tokenizer.parent / name, target / name)


def _tokenizer_files(tokenizer_file: str) -> str:
    kind = "SentencePiece" if tokenizer_file == TOKENIZER else f"HF tokenizers, with {TOKENIZER_CONFIG}"
    return f"{tokenizer_file} ({kind},\n  the run's tokenizer)"


def _tokenizer_text(tokenizer_file: str) -> str:
    if tokenizer_file == TOKENIZER:
        return (f"Tokenize with SentencePiece (or mistral-common) on {TOKENIZER}; do not build a HF fast tokenizer "
                "from the\n"
                "file alone (transformers 5 makes a wrong vocabulary from `LlamaTokenizerFast(vocab_file=...)`).")
    return f"""Tokenize with the `tokenizers` library on {TOKENIZER_FILE} (the run's base's own) with
`add_special_tokens=False`, matching no added token in the text (training encoded the text with the
file's `added_tokens` removed), and take BOS/EOS from {TOKENIZER_CONFIG}. The ids and "SentencePiece
encoding" below are those of the Mistral v3 vocabulary; use this tokenizer's."""


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


def _embedding_section(architecture: str = "MistralForCausalLM") -> str:
    strip = repr(INSTRUCTION_STRIP)
    base_class = architecture.removesuffix("ForCausalLM") + "Model"
    return f"""## Input format (embedding task)

Token ids: BOS (id 1), then the SentencePiece encoding of the plain text

    <|user|>\\n{{instruction}}\\n<|embed|>\\n{{text}}

that is, `<s><|user|>\\n{{instruction}}\\n<|embed|>\\n{{text}}` with `<s>` as the BOS id; no EOS.
The instruction is stripped of the characters {strip} at both ends; with an empty instruction the
input is `<s><|embed|>\\n{{text}}`. `<|user|>` and `<|embed|>` are ordinary text.

The embedding is the mean of the final hidden states (after the final RMSNorm: `{base_class}`'s
`last_hidden_state`) over the **text tokens only**: leave out BOS and every token up to and
including the newline after `<|embed|>` (the prefix has 1 + len(encode(prefix string)) tokens,
since the newline is a byte token that no merge crosses), then L2-normalise. Compare embeddings by
cosine similarity (a dot product of the normalised vectors).

**Attention must be bidirectional.** The model was trained to embed with every token attending to
every real token of its input, but HF `{base_class}` / `{architecture}` build a causal mask.
Pass a prepared 4D additive mask instead of the usual 2D one: shape [batch, 1, T, T], 0.0 where the
key position is a real token and `torch.finfo(dtype).min` where it is padding (transformers 5 uses a
4D mask as given, with the eager and sdpa attention; checked against recfound_jax with transformers
5.24). A server that cannot take a custom mask (vLLM, TGI) gives causal embeddings that do not match
what the model was trained on.

```python
import sentencepiece as spm, torch, transformers

sp = spm.SentencePieceProcessor(model_file="tokenizer.model")
model = transformers.{base_class}.from_pretrained(".").eval()  # this folder
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


def readme_text(task: Task, run_dir: Path, step: int | None, config_name: str, dtype: str,
                tokenizer_file: str = TOKENIZER, architecture: str = "MistralForCausalLM") -> str:
    """The README.md of a folded export: the task, where it came from, and how to feed the model
    (``architecture``: the checkpoint's transformers class)."""
    kind = "embedding" if task.is_embedding else "generative"
    section = _embedding_section(architecture) if task.is_embedding else _generative_section()
    family = architecture.removesuffix("ForCausalLM")
    files = _tokenizer_files(tokenizer_file)
    return f"""# RecFound task export: {task.name} ({task.short}, {kind})

A plain {family} checkpoint for one RecFound task: the task's mixture of LoRA experts (TMoLE) is folded
into the q, k, v and o weights of every layer (W0 + (alpha / r) * sum_j gate_j B_j A_j with the task's
gate), so it runs with no adapter code.

{_provenance(task, run_dir, step, config_name)}- weights dtype: {dtype}
- files: config.json and *.safetensors (transformers `{architecture}`), {files}, this README

{_tokenizer_text(tokenizer_file)}

{section}
Other tasks need their own export: the gate, and so the folded weights, differ per task.
"""


def _provenance(task: Task, run_dir: Path, step: int | None, config_name: str) -> str:
    kind = "embedding" if task.is_embedding else "generative"
    return (f"- task: `{task.name}` (id {task.id}, short name {task.short}, {kind}, metric {task.metric})\n"
            f"- run: `{run_dir}` (config name `{config_name}`)\n- step: {step}\n")


def peft_readme_text(task: Task, run_dir: Path, step: int | None, config_name: str, base: Path, rank: int,
                     tokenizer_file: str = TOKENIZER, architecture: str = "MistralForCausalLM") -> str:
    """The README.md of a PEFT adapter export: the task, the base it adapts (a transformers ``architecture``),
    serving, the input format."""
    section = _embedding_section(architecture) if task.is_embedding else _generative_section()
    return f"""# RecFound task adapter: {task.name} ({task.short}) as a PEFT LoRA

The task's mixture of LoRA experts (TMoLE) on q, k, v and o as one standard LoRA of rank {rank}: the
experts the task routes to, stacked, with the task's gates and alpha / r folded into lora_B
(lora_alpha = r, so PEFT's scale is 1). Every task of the run is such an adapter over the same base.

{_provenance(task, run_dir, step, config_name)}- base model: `{base}` (the run's base, `base_model_name_or_path`)
- files: {peft_adapter.CONFIG_FILE}, {peft_adapter.WEIGHTS_FILE} (float32), {tokenizer_file}, this README

```python
import peft, transformers
base = transformers.{architecture}.from_pretrained("{base}")
model = peft.PeftModel.from_pretrained(base, ".")  # this folder
```

Serving every task over one base with a multi-LoRA server, e.g. vLLM (not run by this project's tests):

    vllm serve {base} --enable-lora --max-lora-rank {max(16, 1 << (rank - 1).bit_length())} \\
        --lora-modules {task.short}=<this folder> <other task>=<its folder> ...

and a request names the task's adapter as its model. Generative tasks only: servers run causal
attention, and an embedding task needs the bidirectional mask below.

{section}"""


def export_task(run_dir: str | os.PathLike, task: str | int | Task, out: str | os.PathLike, step: int | None = None,
                *, peft: bool = False) -> Path:
    """Write ``out``: run ``run_dir``'s model at ``step`` (default: the latest) for ``task``.

    ``out`` gets HF config.json + safetensors with the task folded in (`save_hf(model, out, task=...)`), or
    with ``peft`` the task's PEFT LoRA adapter over the run's base (`peft_adapter.save_peft_adapter`); and the
    run's tokenizer (`copy_tokenizer`) and README.md. ``task``: a name, short name or id of the run's table
    (`config.task_table`), or a Task of it. Raises KeyError for a task not in the table, FileExistsError
    when ``out`` is not empty.
    """
    return export_tasks(run_dir, [task], out, step, peft=peft, one_folder=True)[0]


def export_tasks(run_dir: str | os.PathLike, tasks: Sequence[str | int | Task] | None, out: str | os.PathLike,
                 step: int | None = None, *, peft: bool = False, one_folder: bool = False) -> list[Path]:
    """`export_task` for each of ``tasks`` (None: every task of the run's table) into out/<task name> (the
    model is loaded once); with ``one_folder`` the single task goes into ``out`` itself."""
    run_dir, out = Path(run_dir).absolute(), Path(out).absolute()
    resolved = resolve_tasks(run_dir, tasks)
    targets = [out] if one_folder else [out / t.name for t in resolved]
    for target in targets:
        if target.exists() and any(target.iterdir()):
            raise FileExistsError(f"{target} already exists and is not empty; choose another --out")
    tokenizer = rundir.read_run_info(run_dir).get("tokenizer")
    if not tokenizer or not Path(tokenizer).is_file():
        raise FileNotFoundError(f"{run_dir}: run.json names tokenizer {tokenizer!r}, which is not a file")
    model, config, step = rundir.load_model(run_dir, step)
    base = rundir.checked_base(run_dir)
    tokenizer_file = exported_tokenizer_name(Path(tokenizer))
    architecture = FAMILIES[model.config.family].architecture
    for task, target in zip(resolved, targets):
        if peft:
            peft_adapter.save_peft_adapter(model, task, target, str(base))
            rank = jsonio.read_json(target / peft_adapter.CONFIG_FILE)["r"]
            text = peft_readme_text(task, run_dir, step, config.name, base, rank, tokenizer_file, architecture)
        else:
            save_hf(model, target, task=task)
            text = readme_text(task, run_dir, step, config.name, str(model.embed[...].dtype), tokenizer_file,
                               architecture)
        copy_tokenizer(Path(tokenizer), target)
        (target / README).write_text(text, encoding="utf-8")
    return targets


def resolve_tasks(run_dir: str | os.PathLike, tasks: Sequence[str | int | Task] | None) -> list[Task]:
    """``tasks`` (names, short names, ids or Tasks) as Tasks of the run's table, or all of them for None; KeyError
    lists the table's names."""
    table = config_lib.task_table(rundir.read_config(run_dir))
    if tasks is None:
        return list(table.tasks)
    resolved = [table.get(t.id if isinstance(t, Task) else t) for t in tasks]
    for given, found in zip(tasks, resolved):
        if isinstance(given, Task) and given != found:
            raise KeyError(f"task {given.name} (id {given.id}) is not task {found.id} of the run's table "
                           f"({found.name})")
    return resolved


def _known_task(task: str) -> bool:
    """--task names a task of --run's table (a --run that is no run is reported when the export reads it)."""
    if FLAGS["run"].value is None:
        return True
    try:
        resolve_tasks(FLAGS["run"].value, [task])
    except FileNotFoundError:
        return True
    except KeyError as err:
        raise flags.ValidationError(str(err.args[0])) from None
    return True


FLAGS = flags.FlagValues()
_RUN = flags.DEFINE_string("run", None, "the run directory", required=True, flag_values=FLAGS)
_TASK = flags.DEFINE_string("task", None, "task name or short name of the run's table: "
                            f"{', '.join(t.name for t in TASKS)} or one of its config.added_tasks",
                            flag_values=FLAGS)
_ALL_TASKS = flags.DEFINE_bool("all_tasks", False, "export every task of the run's table, one folder each under --out",
                               flag_values=FLAGS)
_PEFT = flags.DEFINE_bool("peft", False, "write PEFT LoRA adapters over the run's base instead of folded checkpoints",
                          flag_values=FLAGS)
_STEP = flags.DEFINE_integer("step", None, "checkpoint step (default: the latest)", flag_values=FLAGS)
_OUT = flags.DEFINE_string("out", None, "output directory (must not exist or be empty)", required=True,
                           flag_values=FLAGS)
flags.register_validator("task", lambda task: task is None or _known_task(task), flag_values=FLAGS)
flags.register_multi_flags_validator(
    ["task", "all_tasks"], lambda f: (f["task"] is None) == bool(f["all_tasks"]),
    message="give exactly one of --task NAME and --all_tasks", flag_values=FLAGS)


def main(argv: Sequence[str] | None = None) -> int:
    """Export and print where the files are."""
    cli.parse(FLAGS, argv, __doc__)

    def export() -> str:
        kind = "PEFT adapter" if _PEFT.value else "folded checkpoint"
        if _ALL_TASKS.value:
            outs = export_tasks(_RUN.value, None, _OUT.value, step=_STEP.value, peft=_PEFT.value)
            return f"exported {len(outs)} tasks of {_RUN.value} ({kind} each) under {_OUT.value}"
        task = resolve_tasks(_RUN.value, [_TASK.value])[0]
        out = export_task(_RUN.value, task, _OUT.value, step=_STEP.value, peft=_PEFT.value)
        return f"exported {task.name} of {_RUN.value} ({kind}) to {out}"

    return cli.attempt(export, FileNotFoundError, FileExistsError)


if __name__ == "__main__":
    cli.run(main)
