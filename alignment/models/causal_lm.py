"""Causal LMs from config: the ``tiny`` Llama with random init, or a local HF checkpoint,
optionally wrapped with LoRA (peft). Saved models are plain ``save_pretrained`` directories."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, PreTrainedModel

from alignment.chat_format import SPECIAL_TOKENS
from alignment.template_format import uses_template


@dataclass
class LoraSpec:
    enabled: bool = False
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])


@dataclass
class ArchSpec:
    """Shape of the ``tiny`` model (Llama architecture)."""

    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 4
    num_heads: int = 4
    max_position_embeddings: int = 512


def tiny_llama_config(arch: ArchSpec, vocab_size: int, pad_id: int, eos_id: int) -> LlamaConfig:
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=arch.hidden_size,
        intermediate_size=arch.intermediate_size,
        num_hidden_layers=arch.num_layers,
        num_attention_heads=arch.num_heads,
        num_key_value_heads=arch.num_heads,
        max_position_embeddings=arch.max_position_embeddings,
        tie_word_embeddings=True,
        pad_token_id=pad_id,
        eos_token_id=eos_id,
        bos_token_id=None,
    )


def build_tiny(arch: ArchSpec, tokenizer, seed: int = 0) -> LlamaForCausalLM:
    """A randomly initialised tiny Llama sized to ``tokenizer``."""
    torch.manual_seed(seed)
    cfg = tiny_llama_config(arch, len(tokenizer), tokenizer.pad_token_id, tokenizer.eos_token_id)
    return LlamaForCausalLM(cfg)


def load_causal_lm(path: str, tokenizer, dtype: torch.dtype = torch.float32) -> PreTrainedModel:
    """A causal LM from a local checkpoint directory, resized to ``tokenizer`` (which may have
    gained the MOSS special tokens)."""
    if not os.path.isdir(path):
        raise FileNotFoundError(f"model.path: {path!r} is not a local checkpoint directory")
    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True, dtype=dtype)
    if model.get_input_embeddings().num_embeddings < len(tokenizer):
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.eos_token_id = tokenizer.eos_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model


def added_token_ids(tokenizer, checkpoint: str | None = None) -> list[int]:
    """Ids of the tokens the lab adds to a pretrained model's tokenizer whose embedding rows the
    checkpoint at ``checkpoint`` has not learned: MOSS's special tokens in the MOSS format that its
    own tokenizer lacks (a base model's rows are new; a checkpoint the lab saved after SFT carries
    the tokens, and their rows are trained), none in the chat-template format."""
    if uses_template(tokenizer):
        return []
    known = _saved_vocabulary(checkpoint) if checkpoint is not None else {}
    return [int(tokenizer.convert_tokens_to_ids(t)) for t in SPECIAL_TOKENS if t not in known]


def _saved_vocabulary(checkpoint: str) -> dict[str, int]:
    """The vocabulary of the tokenizer saved in ``checkpoint``; empty where it holds none."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(checkpoint, local_files_only=True).get_vocab()
    except (OSError, ValueError):  # no tokenizer files: every added token is new to this checkpoint
        return {}


def apply_lora(model: PreTrainedModel, spec: LoraSpec, new_token_ids: Sequence[int] = (),
               task_type: str = "CAUSAL_LM") -> PreTrainedModel:
    """Wrap ``model`` with LoRA adapters when enabled; otherwise return it unchanged.

    ``new_token_ids``: embedding rows the lab added to a pretrained model (MOSS's special tokens).
    They start random, so they train too (peft's ``trainable_token_indices``: only those rows, in
    the input embedding and a tied output head), and they merge into the saved weights with the
    adapters (``mergeable``). ``task_type`` ``SEQ_CLS``: a value model (``alignment.models.value_head``),
    whose scalar head trains in full beside the adapters (peft's ``modules_to_save``) and is saved
    with them."""
    if not spec.enabled:
        return model
    from peft import LoraConfig, get_peft_model

    tokens = {"trainable_token_indices": sorted(set(new_token_ids))} if new_token_ids else {}
    cfg = LoraConfig(r=spec.r, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                     target_modules=list(spec.target_modules), task_type=task_type, **tokens)
    return get_peft_model(model, cfg)


def merged_weights(model: torch.nn.Module, only_adapted: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """``model``'s weights under the plain transformers names, one at a time, where they live, for an
    inference engine that holds a merged copy: with LoRA an adapted layer's weight is ``W + s·BA``
    in a new tensor (merging in place and back would let rounding drift the base weights). With
    ``only_adapted``, every parameter of the adapted layers and nothing else (an engine that reloads
    a layer rebuilds it from what it is sent: a bias left out would be lost)."""
    if not hasattr(model, "peft_config"):
        yield from model.state_dict().items()
        return
    adapted = {_plain_name(name): sub for name, sub in model.named_modules()
               if hasattr(sub, "base_layer") and (hasattr(sub, "get_delta_weight") or hasattr(sub, "token_indices"))}

    def merged(sub: torch.nn.Module) -> torch.Tensor:
        if hasattr(sub, "token_indices"):  # trainable token rows (peft's TrainableTokensLayer)
            return sub.get_merged_weights(sub.active_adapters)
        return sub.base_layer.weight + sum(sub.get_delta_weight(a) for a in sub.active_adapters)

    if only_adapted:
        for layer, sub in adapted.items():
            yield layer + ".weight", merged(sub)
            if getattr(sub.base_layer, "bias", None) is not None:
                yield layer + ".bias", sub.base_layer.bias
        return
    for name, t in model.state_dict().items():
        if "lora_" not in name and "trainable_tokens_" not in name and ".original_module." not in name:
            plain = _plain_name(name)
            layer, _, kind = plain.rpartition(".")
            yield plain, merged(adapted[layer]) if kind == "weight" and layer in adapted else t


def _plain_name(peft_name: str) -> str:
    """A PEFT-wrapped module's or parameter's transformers name: ``base_model.model.``,
    ``.base_layer``, ``.token_adapter`` and ``.modules_to_save.<adapter>`` go."""
    plain = peft_name.removeprefix("base_model.model.").replace(".base_layer.", ".")
    head, sep, rest = plain.partition(".modules_to_save.")  # a module trained in full: its adapter's copy
    if sep:
        plain = head + "." + rest.partition(".")[2]
    return plain.replace(".token_adapter.", ".").removesuffix(".token_adapter")  # trainable token rows


def mergeable(model: torch.nn.Module) -> torch.nn.Module:
    """The plain transformers model to save: LoRA adapters merged into a copy of the weights
    (the live model keeps its adapters, so training can go on after a checkpoint)."""
    if hasattr(model, "merge_and_unload"):
        import copy

        return copy.deepcopy(model).merge_and_unload()
    return model


def save_merged(model: torch.nn.Module, out: str) -> None:
    """``save_pretrained`` of the plain transformers model (LoRA adapters merged) without copying the
    model: the adapted layers' merged weights are new tensors (``merged_weights``), every other
    weight is saved from where it lives. (``mergeable`` deep-copies the whole model first, which
    doubles the memory of a save, a ZeRO-3 one gathered in full included.)"""
    if not hasattr(model, "peft_config"):
        model.save_pretrained(out)
        return
    model.get_base_model().save_pretrained(out, state_dict=dict(merged_weights(model)))
