"""Inference: embedding encoding and pooling, greedy decoding, the RecFound API."""
