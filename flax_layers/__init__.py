"""Flax NNX layers and the pure functions behind them.

Geometric initialisers, CRF / MEMM / Bi-MEMM sequence labelling, attention
masks (bidirectional, left-to-right, UniLM, random order), a BERT-style
encoder that loads Hugging Face checkpoints, UniLM generation and
non-autoregressive MLM reading-comprehension decoding.
"""

# --- exports (one block per module; keep alphabetical within a block) ---

__version__ = "0.1.0"
