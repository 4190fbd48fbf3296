"""Tokenizers: a byte-level BPE trained on the world's corpus, or a local checkpoint's own.

In the MOSS format the MOSS special tokens (role prefixes and ``<eoh> <eot> <eoc> <eor> <eom>``)
are single ids, ``<eom>`` is the end-of-sequence token and ``<pad>`` pads. A checkpoint's tokenizer
that speaks its chat template (``alignment.template_format``) gains no MOSS token: its own
end-of-turn token ends a reply, and only a missing pad token is added.
"""

from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from alignment.chat_format import EOS_TOKEN, PAD_TOKEN, SPECIAL_TOKENS, UNK_TOKEN
from alignment.template_format import mark_template, uses_template


def train_bpe(corpus: Iterable[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on ``corpus`` with the MOSS special tokens."""
    tok = Tokenizer(models.BPE(unk_token=UNK_TOKEN))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD_TOKEN, UNK_TOKEN, *SPECIAL_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token=PAD_TOKEN, unk_token=UNK_TOKEN, eos_token=EOS_TOKEN)
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    fast.padding_side = "left"
    return fast


def add_moss_tokens(tokenizer: PreTrainedTokenizerBase) -> int:
    """Add the MOSS special tokens (and a pad token if missing); returns how many were new."""
    added = tokenizer.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    if tokenizer.pad_token is None:
        added += tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    tokenizer.eos_token = EOS_TOKEN
    tokenizer.padding_side = "left"
    return added


def load_tokenizer(path: str, chat_format: str | None = None) -> PreTrainedTokenizerBase:
    """A tokenizer from a local directory in the format it was saved with (``chat_format`` None) or
    in ``chat_format`` (``moss``: the MOSS special tokens in place; ``template``: its chat template)."""
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if chat_format not in (None, "moss", "template"):
        raise ValueError(f"model.chat_format: {chat_format!r}; choose moss or template")
    if chat_format == "template" or (chat_format is None and uses_template(tokenizer)):
        mark_template(tokenizer)
        if tokenizer.pad_token is None:
            tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        tokenizer.padding_side = "left"
    else:
        add_moss_tokens(tokenizer)
    return tokenizer


def special_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids of every special token of ``tokenizer`` (the MOSS role prefixes and close tokens,
    ``<eom>``, padding and any the checkpoint brings): a sampled reply ends at the first of them."""
    ids = {tokenizer.eos_token_id, *tokenizer.all_special_ids}
    for token in SPECIAL_TOKENS:
        i = tokenizer.convert_tokens_to_ids(token)
        if i is not None and i != tokenizer.unk_token_id:
            ids.add(i)
    ids.discard(None)
    return sorted(ids)
