"""Run recipes by name or by path: a recipe is a Python file whose ``get_config()`` returns a ConfigDict.

The shipped recipes are the modules of configs/, installed as the package ``recfound_jax.configs``
(setup.py maps it), so a name (``demo``, ``demo_base``, ``recfound_mistral7b``, the ablations) resolves
through the import system to the installed files: the same from an editable install of the source tree
and from a wheel, whatever the working directory. Any other recipe is given by its file path.
"""
from __future__ import annotations

import importlib
import importlib.resources
import importlib.util
import os
from pathlib import Path
from types import ModuleType

import ml_collections
from absl import flags
from ml_collections import config_flags

PACKAGE = "recfound_jax.configs"
flags.disclaim_key_flags()  # a flag that define_flag makes belongs to its caller (--help groups flags by module)


class RecipeError(ValueError):
    """An unknown recipe name or a missing recipe file; the message lists the shipped names."""


def names() -> list[str]:
    """The shipped recipes' names: the modules of recfound_jax.configs."""
    files = importlib.resources.files(PACKAGE).iterdir()
    return sorted(f.name[:-3] for f in files if f.name.endswith(".py") and not f.name.startswith("_"))


def is_name(recipe: str | os.PathLike) -> bool:
    """Whether ``recipe`` is meant as a name (a bare identifier such as ``demo``) rather than a file path."""
    return isinstance(recipe, str) and recipe.isidentifier()


def exists(recipe: str | os.PathLike) -> bool:
    """Whether ``recipe`` is a shipped recipe's name or an existing file."""
    return recipe in names() if is_name(recipe) else Path(recipe).is_file()


def load(recipe: str | os.PathLike) -> ml_collections.ConfigDict:
    """``get_config()`` of a recipe given by name (``"demo"``) or by file path (``"configs/demo.py"``)."""
    return _module(recipe).get_config()


def _module(recipe: str | os.PathLike) -> ModuleType:
    if not exists(recipe):
        what = f"unknown recipe {recipe!r}" if is_name(recipe) else f"{recipe}: no such recipe file"
        raise RecipeError(f"{what}; the shipped recipes are {', '.join(names())} (or give a file path)")
    if is_name(recipe):
        return importlib.import_module(f"{PACKAGE}.{recipe}")
    path = Path(recipe)
    spec = importlib.util.spec_from_file_location(f"recfound_recipe_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class _RecipeParser(flags.ArgumentParser):
    """The value of a recipe flag: a name or a file path, loaded by `load` and locked."""

    def parse(self, recipe: str) -> ml_collections.ConfigDict:
        config = load(recipe)
        config.lock()
        return config

    def flag_type(self) -> str:
        return "config object"


def define_flag(name: str, help_string: str, flag_values: flags.FlagValues) -> flags.FlagHolder:
    """A required flag ``--NAME`` that takes a recipe by name or path, with ml_collections' overrides
    ``--NAME.key=value`` (config_flags reads a file path only, so its parser is replaced by `load`)."""
    holder = config_flags.DEFINE_config_file(name, None, help_string, flag_values=flag_values, lock_config=True)
    flag_values[name].parser = _RecipeParser()
    flags.mark_flag_as_required(name, flag_values)
    return holder
