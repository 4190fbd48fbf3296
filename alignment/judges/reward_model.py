"""A reward-model judge: an independent ("gold") reward model from a local Hugging Face directory.

The model is any ``*ForSequenceClassification`` checkpoint with one label (e.g. a Skywork or
ArmoRM-style reward model saved locally). A (context, reply) pair is shown to it in its own chat
format, not the lab's MOSS format: ``rm_text`` renders the turns as user / assistant messages with
the tokenizer's chat template, and ``score_texts`` reads the scalar score of each text.

Nothing is downloaded: every load is ``local_files_only``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from alignment.chat_format import Conversation
from alignment.data.batching import pad_right
from alignment.models.model_dir import check_model_dir, model_config


def check_reward_model(path: str | Path) -> None:
    """Fail fast (no weights read) unless ``path`` is a directory holding a one-label sequence
    classifier: ``config.json`` whose ``architectures`` name a ``*ForSequenceClassification``
    class, one label (``len(id2label) == 1`` or ``num_labels == 1``; transformers' default
    without either is 2), and tokenizer files (``alignment.models.model_dir.check_model_dir``).
    Raises ``ValueError`` naming the path and the fault."""
    key = str(path)
    config = model_config(key, check_model_dir(key, path, weights=False))
    archs = config.get("architectures") or []
    if not any(isinstance(a, str) and a.endswith("ForSequenceClassification") for a in archs):
        raise ValueError(f"{path}: architectures {archs} name no *ForSequenceClassification class "
                         "(a reward model has a scalar score head)")
    id2label = config.get("id2label")
    num_labels = len(id2label) if isinstance(id2label, dict) else config.get("num_labels", 2)
    if num_labels != 1:
        raise ValueError(f"{path}: {num_labels} labels; a reward model has exactly one (num_labels=1)")


def load_reward_model(path: str | Path,
                      dtype: torch.dtype = torch.float32) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The reward model and its tokenizer from a local directory (checked first), in eval mode.
    A tokenizer without a pad token pads with its end-of-sequence token; the model's config gets
    the pad id (transformers reads the score at the last non-pad token)."""
    check_reward_model(path)
    tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise ValueError(f"{path}: the tokenizer has neither a pad token nor an end-of-sequence token")
        tokenizer.pad_token = tokenizer.eos_token
    model = AutoModelForSequenceClassification.from_pretrained(str(path), local_files_only=True, dtype=dtype)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.eval()
    return model, tokenizer


def rm_text(tokenizer: PreTrainedTokenizerBase, context: Conversation, reply: str) -> str:
    """``reply`` to the last turn of ``context`` as the reward model's own chat: user / assistant
    messages from the turns (earlier turns' human and MOSS fields, then the last turn's human field
    and ``reply``). The lab's meta-instruction and the plugin fields (inner thoughts, commands,
    results) are left out. Rendered with the tokenizer's chat template when it has one, else as a
    plain ``User: ...`` / ``Assistant: ...`` transcript, messages separated by a blank line."""
    if not context.turns:
        raise ValueError("a conversation with no turns has no reply to score")
    messages: list[dict[str, str]] = []
    for turn in context.turns[:-1]:
        messages += [{"role": "user", "content": turn.human}, {"role": "assistant", "content": turn.moss}]
    messages += [{"role": "user", "content": context.turns[-1].human}, {"role": "assistant", "content": reply}]
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, tokenize=False)
    names = {"user": "User", "assistant": "Assistant"}
    return "\n\n".join(f"{names[m['role']]}: {m['content']}" for m in messages)


def _encode(tokenizer: PreTrainedTokenizerBase, text: str, max_length: int) -> list[int]:
    # a chat template usually writes the BOS token itself: do not add a second one
    bos = tokenizer.bos_token
    ids = tokenizer(text, add_special_tokens=not (bos and text.startswith(bos)))["input_ids"]
    return ids[-max_length:]  # truncate from the left: the end holds the reply


@torch.inference_mode()
def score_texts(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str],
                max_length: int = 1024, batch_size: int = 16) -> list[float]:
    """The reward model's scalar score of each text. A text longer than ``max_length`` tokens keeps
    its last ``max_length`` (the reply's end). Batches are cut in order of length (little padding)
    and right-padded; the scores come back in input order."""
    if max_length < 1 or batch_size < 1:
        raise ValueError(f"max_length and batch_size must be positive, got {max_length} and {batch_size}")
    seqs = [_encode(tokenizer, t, max_length) for t in texts]
    if any(not s for s in seqs):
        raise ValueError("an empty text has no score")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else model.config.pad_token_id
    if pad_id is None:
        raise ValueError("neither the tokenizer nor the model config has a pad token id (see load_reward_model)")
    device = next(model.parameters()).device
    order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
    out = [0.0] * len(seqs)
    for start in range(0, len(order), batch_size):
        part = order[start:start + batch_size]
        ids, mask = pad_right([seqs[i] for i in part], pad_id)
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        for i, s in zip(part, logits[:, 0].float().tolist()):
            out[i] = s
    return out
