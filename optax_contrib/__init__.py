"""Composable optax transformations and losses.

AdaFactor (factored second moments), Lookahead (slow/fast weights), a lazy
wrapper for embedding tables, and the multi-label "softmax + cross-entropy"
(ZLPR) losses, all as plain optax ``GradientTransformation``s and pure
functions.
"""

from optax_contrib.adafactor import (
    FactoredAxes,
    MomentumEmaState,
    ScaleByFactoredRmsState,
    adafactor,
    clip_by_update_rms,
    factored_axes_for,
    momentum_ema,
    relative_step_size,
    scale_by_factored_rms,
    scale_by_param_rms,
)
from optax_contrib.lazy import (
    LazyState,
    lazy,
)
from optax_contrib.lookahead import (
    LookaheadState,
    lookahead,
    lookahead_slow_params,
)
from optax_contrib.losses import (
    multilabel_categorical_crossentropy,
    multilabel_predict,
    multilabel_probabilities,
    sparse_multilabel_categorical_crossentropy,
)

__all__ = [
    "adafactor",
    "clip_by_update_rms",
    "factored_axes_for",
    "FactoredAxes",
    "lazy",
    "LazyState",
    "lookahead",
    "lookahead_slow_params",
    "LookaheadState",
    "momentum_ema",
    "MomentumEmaState",
    "multilabel_categorical_crossentropy",
    "multilabel_predict",
    "multilabel_probabilities",
    "relative_step_size",
    "scale_by_factored_rms",
    "scale_by_param_rms",
    "ScaleByFactoredRmsState",
    "sparse_multilabel_categorical_crossentropy",
]

__version__ = "0.1.0"
