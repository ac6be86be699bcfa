"""Composable optax transformations and losses.

AdaFactor (factored second moments), Lookahead (slow/fast weights), a lazy
wrapper for embedding tables, and the multi-label "softmax + cross-entropy"
(ZLPR) losses, all as plain optax ``GradientTransformation``s and pure
functions.
"""

# --- exports (one block per module; keep alphabetical within a block) ---

__version__ = "0.1.0"
