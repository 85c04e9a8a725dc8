"""The command lines and the README: every command answers --help (exit 0) listing each of its flags with
its help text, every command of the README's CLI table is one of them, and the README's Python snippet
runs against a tiny run."""
from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from recfound_jax import cli
from recfound_jax.runs import rundir
from tests.train_fixtures import tiny_config, write_model_run, write_tiny_base

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
# module run with -m -> the module that defines its flags
COMMANDS = {
    "recfound_jax.train": "recfound_jax.train.__main__",
    "recfound_jax.evaluate": "recfound_jax.evaluate.__main__",
    "recfound_jax.merge": "recfound_jax.merge.__main__",
    "recfound_jax.convert.export": "recfound_jax.convert.export",
    "recfound_jax.convert.released": "recfound_jax.convert.released",
    "recfound_jax.demo.pretrain": "recfound_jax.demo.pretrain",
    "recfound_jax.demo.synthetic": "recfound_jax.demo.synthetic",
    "recfound_jax.demo.recbole_export": "recfound_jax.demo.recbole_export",
    "recfound_jax.data.from_logs": "recfound_jax.data.from_logs",
}


def readme_commands() -> list[str]:
    """The module of each command in the README's table headed ``| what | command |``."""
    lines = README.read_text(encoding="utf-8").splitlines()
    start = lines.index("| what | command |")
    modules = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        command = re.search(r"`([^`]*)`", line.split("|")[2]).group(1).split()  # python -m MODULE --flags
        assert command[:2] == ["python", "-m"] and all(word.startswith(("-", "[")) for word in command[3:4]), line
        modules.append(command[2])
    return modules


def test_the_readme_table_lists_every_command():
    assert sorted(readme_commands()) == sorted(COMMANDS)


@pytest.fixture(scope="module")
def helps() -> dict[str, subprocess.CompletedProcess]:
    """``python -m MODULE --help`` of every command, known or named by the README, run together."""
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = {module: subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for module in sorted(set(COMMANDS) | set(readme_commands()))}
    results = {}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=300)
        results[module] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


@pytest.mark.parametrize("module", sorted(set(COMMANDS) | set(readme_commands())))
def test_every_command_answers_help(helps, module):
    result = helps[module]
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"python -m {module}" in result.stdout and "\nflags:\n" in result.stdout


@pytest.mark.parametrize("module", sorted(COMMANDS))
def test_help_lists_every_flag_with_its_help(helps, module):
    listing = helps[module].stdout.split("\nflags:\n", 1)[1]
    flag_values = importlib.import_module(COMMANDS[module]).FLAGS
    for name in flag_values:
        flag = flag_values[name]
        assert f"--{name}:" in listing or f"--[no]{name}:" in listing, (module, name)
        assert " ".join(flag.help.split()[:3]) in " ".join(listing.split()), (module, name)


def test_help_exits_0_and_a_bad_flag_exits_2_naming_it(capsys):
    module = importlib.import_module(COMMANDS["recfound_jax.merge"])
    with pytest.raises(SystemExit) as exited:
        module.main(["--help"])
    assert exited.value.code == 0 and "--density" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        module.main(["--run", "r", "--steps", "1", "--out", "o", "--densty", "0.5"])
    assert exited.value.code == cli.USAGE_ERROR
    assert "Unknown command line flag 'densty'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        module.main(["--run", "r", "--steps", "1", "--out", "o", "extra"])
    assert exited.value.code == cli.USAGE_ERROR and "unexpected arguments ['extra']" in capsys.readouterr().err


def test_a_recipe_flag_takes_a_name_or_a_path_with_overrides(monkeypatch, capsys):
    flag_values = importlib.import_module(COMMANDS["recfound_jax.train"]).FLAGS
    cli.parse(flag_values, ["--config", "demo", "--config.train.steps=3", "--config.model.base_recipe=demo_base"], "")
    assert (flag_values.config.name, flag_values.config.train.steps) == ("demo", 3)
    monkeypatch.chdir(ROOT)
    cli.parse(flag_values, ["--config=configs/demo_no_tmole.py", "--config.train.steps=4"], "")
    assert (flag_values.config.name, flag_values.config.train.steps) == ("demo_no_tmole", 4)
    assert not flag_values.config.tmole.enabled
    with pytest.raises(SystemExit) as exited:
        cli.parse(flag_values, ["--config", "demoo"], "")
    assert exited.value.code == cli.USAGE_ERROR
    assert "flag --config=demoo: unknown recipe 'demoo'; the shipped recipes are demo, " in capsys.readouterr().err


def _python_snippet() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert len(blocks) == 1, "the README has one Python snippet"
    return blocks[0]


def test_the_readme_python_snippet_runs_on_a_tiny_run(tmp_path, monkeypatch):
    """The snippet opens runs/demo: here a tiny untrained run in the working directory."""
    base = write_tiny_base(tmp_path / "base")
    c = tiny_config(base)
    write_model_run(tmp_path / "runs" / "demo", c, base, rundir.build_model(c, base), 1)
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_python_snippet(), "README.md", "exec"), namespace)  # noqa: S102 (the README's own code)
    assert namespace["items"].shape[0] == 1
    assert len(namespace["answers"]) == 1 and isinstance(namespace["answers"][0], str)
    assert namespace["logits"].shape[:2] == (1, 3)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc tunables are Linux's")
def test_a_command_restarts_once_with_huge_pages_unless_told_not_to():
    """`cli.restart_with_hugepages` execs the same command line with the tunable set, once; a tunable the user
    set, or RECFOUND_HUGEPAGES=0, is left alone."""
    code = ("import os, sys; from recfound_jax import cli; print('start', flush=True); cli.restart_with_hugepages(); "
            "print(os.environ.get('GLIBC_TUNABLES'), sys.argv[1:])")

    def run(**env: str) -> list[str]:
        environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RECFOUND_HUGEPAGES")}
        done = subprocess.run([sys.executable, "-c", code, "--flag"], env={**environ, **env}, cwd=ROOT,
                              capture_output=True, text=True, check=True)
        return done.stdout.splitlines()

    assert run() == ["start", "start", f"{cli.HUGEPAGE_TUNABLE} ['--flag']"]
    assert run(RECFOUND_HUGEPAGES="0") == ["start", "None ['--flag']"]
    assert run(GLIBC_TUNABLES="glibc.malloc.check=0") == ["start", "glibc.malloc.check=0 ['--flag']"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc tunables are Linux's")
def test_python_m_restarts_before_importing_jax():
    """``python -m recfound_jax.<command>`` re-executes while the package itself is being imported: Python's
    import log (-X importtime, kept by the exec) shows the CLI module imported by both processes, JAX by one."""
    environ = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "RECFOUND_HUGEPAGES")}
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "recfound_jax.merge", "--help"], env=environ,
                          cwd=ROOT, capture_output=True, text=True, check=True)
    imported = [line.rsplit("|", 1)[-1].strip() for line in done.stderr.splitlines() if line.startswith("import time:")]
    assert imported.count("recfound_jax.cli") == 2
    assert imported.count("jax") == 1
    assert done.stdout.count("flags:") == 1
