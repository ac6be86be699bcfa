"""Flax NNX layers and the pure functions behind them.

Geometric initialisers, CRF / MEMM / Bi-MEMM sequence labelling, attention
masks (bidirectional, left-to-right, UniLM, random order, packed rows), a
BERT-style encoder that loads Hugging Face checkpoints, UniLM generation
(greedy, beam search, sampling) and non-autoregressive MLM reading-comprehension
decoding.
"""

from flax_layers.bert import (
    BertConfig,
    BertEmbeddings,
    BertLayer,
    BertModel,
    attention_weights,
    masked_softmax,
)
from flax_layers.checkpoint import (
    LoadReport,
    bert_param_map,
    load_hf_bert,
    load_safetensors,
    save_hf_bert,
)
from flax_layers.crf import (
    crf_log_likelihood,
    crf_log_partition,
    crf_marginals,
    crf_sequence_score,
    viterbi_decode,
    viterbi_nbest,
)
from flax_layers.generation import (
    GenerationOutput,
    KVCache,
    unilm_beam_search,
    unilm_decode_step,
    unilm_encode_source,
    unilm_greedy_generate,
    unilm_sample,
)
from flax_layers.initializers import (
    compute_fans,
    geometric_init,
    glorot,
    he,
    lecun,
    norm_preservation_ratio,
    norm_preserving,
    orthogonality_error,
    xavier,
)
from flax_layers.linear_chain_crf import LinearChainCRF
from flax_layers.masks import (
    bidirectional_mask,
    combine_masks,
    left_to_right_mask,
    mask_to_bias,
    packed_causal_mask,
    packed_position_ids,
    padding_mask,
    padding_mask_from_lengths,
    prefix_lm_mask,
    random_order_mask,
    right_to_left_mask,
    seq2seq_loss,
    unilm_mask,
)
from flax_layers.memm import (
    memm_log_likelihood,
    memm_transition_matrix,
)
from flax_layers.reading_comprehension import (
    MLMReadingInputs,
    PassageAnswer,
    aggregate_answer_scores,
    build_mlm_reading_batch,
    build_mlm_reading_inputs,
    build_mlm_reading_targets,
    passage_constrained_decode,
)
from flax_layers.sequence_tagging import (
    CRF,
    MEMM,
)
from flax_layers.tag_schemes import (
    allowed_transitions,
    mask_transitions,
)
from flax_layers.tokenizer import (
    WordPieceTokenizer,
    load_vocab,
    trim_vocab,
)

__all__ = [
    "aggregate_answer_scores",
    "allowed_transitions",
    "attention_weights",
    "bert_param_map",
    "BertConfig",
    "BertEmbeddings",
    "BertLayer",
    "BertModel",
    "bidirectional_mask",
    "build_mlm_reading_batch",
    "build_mlm_reading_inputs",
    "build_mlm_reading_targets",
    "combine_masks",
    "compute_fans",
    "CRF",
    "crf_log_likelihood",
    "crf_log_partition",
    "crf_marginals",
    "crf_sequence_score",
    "GenerationOutput",
    "geometric_init",
    "glorot",
    "he",
    "KVCache",
    "lecun",
    "LinearChainCRF",
    "left_to_right_mask",
    "load_hf_bert",
    "load_safetensors",
    "load_vocab",
    "LoadReport",
    "mask_to_bias",
    "mask_transitions",
    "masked_softmax",
    "MEMM",
    "memm_log_likelihood",
    "memm_transition_matrix",
    "MLMReadingInputs",
    "norm_preservation_ratio",
    "norm_preserving",
    "orthogonality_error",
    "packed_causal_mask",
    "packed_position_ids",
    "padding_mask",
    "padding_mask_from_lengths",
    "passage_constrained_decode",
    "PassageAnswer",
    "prefix_lm_mask",
    "random_order_mask",
    "right_to_left_mask",
    "save_hf_bert",
    "seq2seq_loss",
    "trim_vocab",
    "unilm_beam_search",
    "unilm_decode_step",
    "unilm_encode_source",
    "unilm_greedy_generate",
    "unilm_sample",
    "unilm_mask",
    "viterbi_decode",
    "viterbi_nbest",
    "WordPieceTokenizer",
    "xavier",
]

__version__ = "0.1.0"
