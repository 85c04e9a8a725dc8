"""Model merging: TIES (published and released order) and linear averaging over checkpoints."""
from recfound_jax.merge.checkpoints import MergeError, merge_params, merge_run
from recfound_jax.merge.ties import ties_merge, ties_merge_leaf, ties_merge_stream

__all__ = ["MergeError", "merge_params", "merge_run", "ties_merge", "ties_merge_leaf", "ties_merge_stream"]
