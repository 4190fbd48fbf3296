"""Value-head models: a scalar head on the decoder, for the critic and the preference model.

They are ``AutoModelForSequenceClassification`` models with one label, so they save and load
with plain transformers; the score of a sequence is read at its last non-pad token.
"""

from __future__ import annotations

import torch
from transformers import AutoModelForSequenceClassification, PreTrainedModel

from alignment.models.shared_prefix import shared_prefix_forward


def load_value_model(path: str, drop_last_layer: bool = False) -> PreTrainedModel:
    """A value model from ``path``: a causal-LM checkpoint gets a new head that starts at zero;
    a saved value model (preference model, critic) keeps its trained head.

    ``drop_last_layer`` replaces the last decoder layer of a causal LM by the head, as the MOSS
    preference model does (§7.1).
    """
    from transformers import AutoConfig

    is_value_model = any(a.endswith("ForSequenceClassification")
                         for a in (AutoConfig.from_pretrained(path, local_files_only=True).architectures or []))
    if is_value_model:
        return AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    kwargs = {}
    if drop_last_layer:
        cfg = AutoConfig.from_pretrained(path, local_files_only=True)
        kwargs["num_hidden_layers"] = cfg.num_hidden_layers - 1
        if getattr(cfg, "layer_types", None):  # per-layer attention kinds (Qwen2, Gemma...): one fewer too
            kwargs["layer_types"] = list(cfg.layer_types)[:-1]
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # the dropped layer and the new head are expected, not news
    try:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, local_files_only=True,
                                                                   **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
    torch.nn.init.zeros_(model.score.weight)
    return model


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token of each row (works for left and right padding)."""
    positions = torch.arange(attention_mask.size(1), device=attention_mask.device)
    return (positions * attention_mask).argmax(dim=1)


def token_values(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                 lockstep: bool = False) -> torch.Tensor:
    """Per-token values ``[B, T]`` (the critic's view); ``lockstep``: ZeRO-3 over several ranks.
    ``model`` may be LoRA-wrapped (peft): its adapters sit inside the transformers model."""
    model = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone = getattr(model, model.base_model_prefix)
    hidden = shared_prefix_forward(backbone, input_ids, attention_mask, lambda out: out.last_hidden_state,
                                   lockstep=lockstep)
    return model.score(hidden).squeeze(-1)


def sequence_scores(model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    lockstep: bool = False) -> torch.Tensor:
    """One scalar per sequence, read at its last non-pad token (the preference model's view)."""
    values = token_values(model, input_ids, attention_mask, lockstep)
    idx = last_token_index(attention_mask)
    return values.gather(1, idx[:, None]).squeeze(1)
