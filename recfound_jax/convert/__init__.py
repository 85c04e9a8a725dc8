"""Checkpoint conversion: HF safetensors in and out, per-task export, the released adapters."""
