"""The built wheel installs anywhere: in a fresh venv, from an empty directory with no source tree, the
shipped recipes resolve by name, the demo base builds from a (tiny) recipe file, a two-step demo run
trains, evaluation reads it, and every other command answers --help."""
from __future__ import annotations

import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fault_fixtures import JAX_CACHE

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("setup.py", "setup.cfg", "pyproject.toml", "README.md", "recfound_jax", "configs")
OTHER_COMMANDS = ("recfound_jax.merge", "recfound_jax.convert.export", "recfound_jax.convert.released",
                  "recfound_jax.demo.pretrain", "recfound_jax.demo.synthetic")
# The shipped demo base recipe at a tiny size, three causal-LM steps and no instruction stage (tested on its
# own in test_pretrain.py and test_instruct.py): what this file tests is that a recipe file extends a shipped one.
TINY_BASE_RECIPE = '''"""The demo base recipe at a tiny size."""
from recfound_jax import recipes


def get_config():
    config = recipes.load("demo_base")
    config.model.update(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=2, head_dim=8)
    config.data.update(generative_rows_per_task=2, eval_rows_per_task=0)
    config.train.update(seq_len=32, batch_size=4, steps=3, warmup_steps=1, log_every=1)
    config.instruct.rows = {}
    return config
'''
TINY_RUN = ("--config.train.steps=2", "--config.train.embedding_batch=6", "--config.train.generative_batch=10",
            "--config.tmole.rank=4", "--config.tmole.alpha=8.0", "--config.tmole.task_embedding_dim=16",
            "--config.s2sched.probe_size=2", "--config.s2sched.window=4", "--config.mesh.shape=(1,1,1)")


def _run(command: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    result = subprocess.run(command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}"
    return result


def _wheel(tmp: Path) -> Path:
    """The wheel built from a copy of the package's sources (no build folder of the tree is reused)."""
    source = tmp / "source"
    source.mkdir()
    for name in SOURCES:
        if (ROOT / name).is_dir():
            shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(ROOT / name, source / name)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp / "dist"),
          str(source)], tmp, dict(os.environ))
    (wheel,) = (tmp / "dist").glob("recfound_jax-*.whl")
    return wheel


def _venv(tmp: Path, wheel: Path) -> Path:
    """A fresh venv holding the wheel; this environment's dependencies come through a .pth path line,
    which adds the folder to sys.path without running the .pth files inside it (the editable install's)."""
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps", "--no-index",
          str(wheel)], tmp, dict(os.environ))
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             capture_output=True, text=True, check=True).stdout.strip()
    (Path(purelib) / "outer_dependencies.pth").write_text("".join(f"{path}\n" for path in site.getsitepackages()))
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> tuple[Path, Path, dict[str, str]]:
    """(the venv's python, an empty working directory, the environment of its commands)."""
    tmp = tmp_path_factory.mktemp("wheel")
    python = _venv(tmp, _wheel(tmp))
    work = tmp / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "XLA_FLAGS")}
    env.update({"RECFOUND_CACHE": str(tmp / "cache"), "JAX_PLATFORMS": "cpu",
                "JAX_COMPILATION_CACHE_DIR": str(JAX_CACHE), "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
                "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0"})
    return python, work, env


def test_the_package_comes_from_the_wheel(installed):
    python, work, env = installed
    found = _run([str(python), "-c", "import recfound_jax, recfound_jax.configs, recfound_jax.recipes as r; "
                  "print(recfound_jax.__file__); print(recfound_jax.configs.__file__); print(r.names())"], work, env)
    package, configs, names = found.stdout.splitlines()
    assert Path(package).is_relative_to(python.parents[1]) and Path(configs).is_relative_to(python.parents[1])
    assert not Path(package).is_relative_to(ROOT)
    assert "'demo'" in names and "'demo_base'" in names and "'recfound_mistral7b_no_tmole'" in names


def test_a_two_step_demo_trains_and_evaluates_from_an_empty_directory(installed):
    python, work, env = installed
    (work / "tiny_base.py").write_text(TINY_BASE_RECIPE)
    _run([str(python), "-m", "recfound_jax.train", "--config", "demo", "--config.model.base_recipe=tiny_base.py",
          *TINY_RUN, "--workdir", "run", "--noprogress"], work, env)
    run = work / "run"
    assert (run / "checkpoints" / "2").is_dir() and (run / "initial_params").is_dir()
    for name in ("config.json", "run.json", "summary.json", "metrics.jsonl"):
        assert (run / name).is_file(), name
    assert Path(env["RECFOUND_CACHE"], "demo_base").is_dir()  # the base was built from the recipe file
    _run([str(python), "-m", "recfound_jax.evaluate", "--run", "run", "--tasks", "Q2I,SA", "--limit", "1",
          "--max_new_tokens", "1", "--noprogress"], work, env)
    assert (run / "eval" / "2" / "metrics.json").is_file() and (run / "eval" / "2" / "results.md").is_file()
    assert sorted(p.name for p in work.iterdir()) == ["run", "tiny_base.py"]  # nothing else written here


def test_the_other_commands_answer_help(installed):
    python, work, env = installed
    procs = {module: subprocess.Popen([str(python), "-m", module, "--help"], cwd=work, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE) for module in OTHER_COMMANDS}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"{module} --help: {err[-2000:]}"
        assert "flags:" in out and "--" in out.split("flags:", 1)[1], module
