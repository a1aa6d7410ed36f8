"""Compression beyond pruning: layer dropping (and, later, quantization)."""
