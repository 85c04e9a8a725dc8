"""Tasks, the released JSONL format, prompt formatting, the synthetic dataset and batching."""
