"""Faults of a run's configuration and surroundings, through `python -m recfound_jax.train` subprocesses:
each bad config gives one error naming its key before anything compiles; the run is offline; another
run's directory is not replaced without --overwrite, nor resumed with a different config.

The CLI calls of this module start together (they are short and mostly wait on imports). Each has a JAX
compilation cache of its own that keeps every program XLA compiles (even `jnp.ones` is one): a call that
was refused before any computation leaves it empty.
"""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from recfound_jax import config as config_lib
from recfound_jax.offline import OFFLINE_VARIABLES
from tests import fault_fixtures as ff
from tests.train_fixtures import tiny_config

OTHER_RUN = {"name": "someone else's run"}


@dataclasses.dataclass
class Outcome:
    returncode: int
    stderr: str
    workdir: Path
    jax_cache: Path

    @property
    def compiled(self) -> list[str]:
        """The programs XLA compiled in the call (its compilation cache's entries)."""
        return sorted(p.name for p in self.jax_cache.glob("*")) if self.jax_cache.is_dir() else []

    @property
    def message(self) -> str:
        """The last line the run wrote to stderr: the error a user reads."""
        return [line for line in self.stderr.splitlines() if line.strip()][-1]


def _cases(base: Path, root: Path) -> dict[str, tuple[Path, list[str], dict[str, str]]]:
    """name -> (config file, extra flags, extra environment) of every CLI call of this module."""
    def config(name: str, **kwargs) -> Path:
        return ff.write_config(root / f"{name}.py", kwargs.pop("base", base), **kwargs)

    env8 = {"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}
    record = root / "environment.json"
    recorder = (
        "import atexit, json, os\n\n\n"
        "def _record():\n"
        "    import huggingface_hub.constants\n"
        f"    names = {sorted(OFFLINE_VARIABLES)!r}\n"
        "    seen = {n: os.environ.get(n) for n in names}\n"
        "    seen['hub_offline'] = huggingface_hub.constants.HF_HUB_OFFLINE\n"
        f"    open({str(record)!r}, 'w').write(json.dumps(seen))\n\n\n"
        "atexit.register(_record)")
    bad_data = root / "bad_data" / "train"
    bad_data.mkdir(parents=True)
    (bad_data / "rows.jsonl").write_text("not json\n")
    return {
        "unknown_key_flag": (config("unknown_key_flag"), ["--config.train.stepz=3"], {}),
        "unknown_key_file": (config("unknown_key_file", edits="c.train.stepz = 3"), [], {}),
        "no_embedding_expert": (config("no_embedding_expert", tmole__num_embedding=0, tmole__num_shared=0), [], {}),
        "negative_experts": (config("negative_experts", tmole__num_generative=-1), [], {}),
        "batch_vs_devices": (config("batch_vs_devices", mesh__shape=(1, -1, 1)), [], env8),
        "length_over_base": (config("length_over_base", data__generative_len=512), [], {}),
        "missing_base": (config("missing_base", base=root / "no_such_base"), [], {}),
        "offline": (ff.write_config(root / "offline.py", base, prelude=recorder, data__dir=str(root / "no_data")),
                    [], {}),
        "other_run": (config("other_run"), [], {}),
        "overwrite": (config("overwrite", data__dir=str(root / "bad_data")), ["--overwrite"], {}),
        "resume_changed": (config("resume_changed", train__steps=7), ["--resume"], {}),
    }


def _plant_other_run(workdir: Path) -> None:
    (workdir / "checkpoints" / "5").mkdir(parents=True)
    (workdir / "checkpoints" / "5" / "marker").write_text("theirs")
    (workdir / "config.json").write_text(json.dumps(OTHER_RUN))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("config_faults")


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory, root) -> dict[str, Outcome]:
    """Every CLI call of the module, started together."""
    base = ff.shared_base(tmp_path_factory)
    cache = ff.shared_cache(tmp_path_factory)
    cases = _cases(base, root)
    for name in ("other_run", "overwrite"):
        _plant_other_run(root / name / "run")
    resumed = root / "resume_changed" / "run"
    resumed.mkdir(parents=True)
    (resumed / "config.json").write_text(json.dumps(config_lib.to_dict(tiny_config(base))))
    procs = {}
    for name, (config, flags, extra) in cases.items():
        workdir, jax_cache = root / name / "run", root / name / "jax_cache"
        env = ff.cli_env(cache, **extra, JAX_COMPILATION_CACHE_DIR=str(jax_cache))
        procs[name] = (subprocess.Popen(ff.cli_args(config, workdir, *flags), env=env, cwd=ff.REPO,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
                       workdir, jax_cache)
    out = {}
    for name, (proc, workdir, jax_cache) in procs.items():
        _, stderr = proc.communicate(timeout=300)
        out[name] = Outcome(proc.returncode, stderr, workdir, jax_cache)
    return out


def test_the_compilation_cache_sees_any_computation(tmp_path):
    """The check behind `Outcome.compiled`: in the CLI calls' environment, one array op leaves an entry."""
    jax_cache = tmp_path / "jax_cache"
    env = ff.cli_env(tmp_path / "cache", JAX_COMPILATION_CACHE_DIR=str(jax_cache))
    subprocess.run([sys.executable, "-c", "import jax.numpy as jnp; jnp.ones(2).block_until_ready()"], env=env,
                   check=True, timeout=120)
    assert Outcome(0, "", tmp_path, jax_cache).compiled != []


CONFIG_ERRORS = [
    ("unknown_key_flag", 'Did you mean "steps" instead of "stepz"?'),
    ("unknown_key_file", "config.train.stepz: unknown key; known keys here: "),
    ("no_embedding_expert", "config.tmole.num_embedding: embedding tasks need at least one embedding or shared expert"),
    ("negative_experts", "config.tmole.num_generative: must be >= 0, got -1"),
    ("batch_vs_devices", "config.train.embedding_batch: 6 is not divisible by the 8 data-parallel devices"),
    ("length_over_base", "config.data.generative_len: 512 exceeds the base's max_position_embeddings=256"),
    ("missing_base", "config.model.base: "),
]


@pytest.mark.parametrize("name, expected", CONFIG_ERRORS, ids=[n for n, _ in CONFIG_ERRORS])
def test_bad_config_is_one_error_naming_the_key_before_compiling(outcomes, name, expected):
    outcome = outcomes[name]
    assert outcome.returncode != 0
    assert expected in outcome.message, outcome.stderr[-2000:]
    assert outcome.compiled == []
    assert not outcome.workdir.exists()  # rejected before the run directory, let alone a compile


def test_missing_base_names_the_path(outcomes):
    assert "no_such_base' is not a HF checkpoint directory (no config.json)" in outcomes["missing_base"].message


def test_the_run_is_offline(outcomes, root):
    """Recorded inside the CLI process at exit (after it rejected a missing data dir): the hub variables
    are set though the parent environment has none, and huggingface_hub reads them as offline."""
    outcome = outcomes["offline"]
    assert "config.data.dir: " in outcome.message
    seen = json.loads((root / "environment.json").read_text())
    assert {k: seen[k] for k in OFFLINE_VARIABLES} == OFFLINE_VARIABLES
    assert seen["hub_offline"] is True


def test_another_runs_directory_is_not_replaced_without_overwrite(outcomes):
    outcome = outcomes["other_run"]
    assert outcome.returncode != 0
    assert outcome.message.startswith(f"recfound_jax.train.trainer.RunExistsError: {outcome.workdir} already holds "
                                      "a run; pass --resume to continue it or --overwrite to replace it")
    assert outcome.compiled == []
    assert json.loads((outcome.workdir / "config.json").read_text()) == OTHER_RUN
    assert (outcome.workdir / "checkpoints" / "5" / "marker").read_text() == "theirs"


def test_overwrite_replaces_the_other_run(outcomes):
    """With --overwrite the old run is gone and the new config is written (the new run then stops at its
    first bad data row, before any compile, which keeps this test fast)."""
    outcome = outcomes["overwrite"]
    assert "rows.jsonl:1: line: invalid_json: " in outcome.message
    assert outcome.compiled == []
    assert not (outcome.workdir / "checkpoints").exists()
    assert json.loads((outcome.workdir / "config.json").read_text())["name"] == "tiny"


def test_resume_with_a_changed_config_names_the_changed_key(outcomes):
    outcome = outcomes["resume_changed"]
    assert outcome.returncode != 0
    assert "--resume: the config differs from the run's config.json at ['train.steps']" in outcome.message
    assert outcome.compiled == []
