"""The demo base: a synthetic recommendation world, causal-LM pretraining and an instruction stage."""
