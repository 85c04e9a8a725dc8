"""Model merging: TIES (published and released order) and linear averaging over checkpoints."""
from recfound_jax.merge.ties import ties_merge, ties_merge_leaf, ties_merge_stream

__all__ = ["ties_merge", "ties_merge_leaf", "ties_merge_stream"]
