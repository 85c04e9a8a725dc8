"""Packages: recfound_jax, and the recipes of configs/ shipped inside it as recfound_jax.configs.

setup.cfg holds the metadata and dependencies; only this mapping needs code, because setup.cfg's
``packages = find:`` cannot add a package whose folder is not under its parent's.
"""
from setuptools import find_packages, setup

setup(packages=[*find_packages(include=["recfound_jax", "recfound_jax.*"]), "recfound_jax.configs"],
      package_dir={"recfound_jax.configs": "configs"})
