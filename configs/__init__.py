"""The shipped run recipes, installed as the package recfound_jax.configs (recfound_jax.recipes loads them by name)."""
