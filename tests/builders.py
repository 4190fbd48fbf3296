"""What a researcher brings, built small for the tests: local checkpoints of other architectures,
a reward model, and data files in the formats people have (MOSS-003 SFT, HH-RLHF, prompts), all
made from the lab's world so that they hold sensible text."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForSequenceClassification, Qwen2Config, Qwen2ForCausalLM

from alignment.chat_format import CLOSE_TOKENS, ROLE_TOKENS, Section
from alignment.world import AIFeedbackLabeller, World

CHAT_TEMPLATE = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}<eom>\n{% endfor %}"


def _templated(tokenizer):
    tok = copy.deepcopy(tokenizer)  # the session fixture stays as it is
    tok.chat_template = CHAT_TEMPLATE
    return tok


def save_qwen2(out: Path, tokenizer, seed: int = 0) -> Path:
    """A tiny random Qwen2 causal LM (not the lab's Llama) with a chat-templated tokenizer."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    _templated(tokenizer).save_pretrained(out)
    return out


def save_reward_model(out: Path, tokenizer, seed: int = 0) -> Path:
    """A tiny one-label Llama sequence classifier with its own chat-templated tokenizer."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                      pad_token_id=tokenizer.pad_token_id, num_labels=1)
    model = LlamaForSequenceClassification(cfg)
    torch.nn.init.normal_(model.score.weight, std=1.0)  # scores of order 1, so that replies differ clearly
    model.save_pretrained(out)
    _templated(tokenizer).save_pretrained(out)
    return out


def _field(section: Section, body: str) -> str:
    return f"{ROLE_TOKENS[section]}: {body}{CLOSE_TOKENS[section]}\n"


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def write_moss_sft(path: Path, world: World, n: int) -> Path:
    """``n`` world conversations as moss-003-sft-data records."""
    rows = []
    for i, conv in enumerate(world.sft_conversations(n, [1.0] * 6)):
        chat = {f"turn_{t}": {"Human": _field(Section.HUMAN, turn.human), "Inner Thoughts": None, "Commands": None,
                              "Tool Responses": None, "MOSS": _field(Section.MOSS, turn.moss)}
                for t, turn in enumerate(conv.turns, 1)}
        rows.append({"conversation_id": i + 1, "meta_instruction": conv.meta_instruction, "num_turns": len(chat),
                     "category": "world", "chat": chat})
    return write_jsonl(path, rows)


def write_hh(path: Path, world: World, n: int, split: str = "val", seed: int = 0) -> Path:
    """``n`` HH-RLHF transcripts ``{"chosen", "rejected"}``: two of a world prompt's candidate replies,
    ordered by the AI-feedback labeller, after the prompt's history."""
    rng, labeller = random.Random(seed), AIFeedbackLabeller(0.05, seed=seed)
    rows = []
    for p in world.prompts(split, n):
        a, b = world.candidates(p, rng)[:2]
        chosen, rejected = (a, b) if labeller.label(p.task, a, b) else (b, a)
        head = "".join(f"\n\nHuman: {t.human}\n\nAssistant: {t.moss}" for t in p.history) + f"\n\nHuman: {p.text}"
        rows.append({"chosen": f"{head}\n\nAssistant: {chosen}", "rejected": f"{head}\n\nAssistant: {rejected}"})
    return write_jsonl(path, rows)


def write_prompts(path: Path, world: World, n: int, split: str = "test") -> Path:
    """``n`` world prompts as ``{"messages": [...]}`` rows (their history included)."""
    rows = []
    for p in world.prompts(split, n):
        msgs = [m for t in p.history for m in ({"role": "user", "content": t.human},
                                                 {"role": "assistant", "content": t.moss})]
        rows.append({"messages": msgs + [{"role": "user", "content": p.text}]})
    return write_jsonl(path, rows)


def save_sft_and_pm(root: Path, tokenizer, hidden: int = 32, intermediate: int = 64) -> tuple[Path, Path]:
    """A small random SFT checkpoint (2 layers, 2 heads) and a preference model made from it, with a
    non-constant reward (mechanics, not quality)."""
    from alignment.models.causal_lm import ArchSpec, build_tiny
    from alignment.models.value_head import load_value_model

    sft, pm = root / "sft", root / "pm"
    arch = ArchSpec(hidden_size=hidden, intermediate_size=intermediate, num_layers=2, num_heads=2)
    build_tiny(arch, tokenizer, seed=0).save_pretrained(sft)
    tokenizer.save_pretrained(sft)
    value = load_value_model(str(sft), drop_last_layer=True)
    torch.nn.init.normal_(value.score.weight, std=0.5)
    value.save_pretrained(pm)
    tokenizer.save_pretrained(pm)
    return sft, pm


# A Qwen2-style ChatML template (system, user and assistant turns; a generation prompt).
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)


def chatml_tokenizer(corpus, vocab_size: int = 512):
    """A byte-level BPE with ChatML's special tokens and chat template, and none of MOSS's: what a
    pretrained chat model's tokenizer looks like (its eos token ``<|im_end|>`` ends a turn)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  special_tokens=["<|endoftext|>", "<unk>", "<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   unk_token="<unk>", additional_special_tokens=["<|im_start|>"])
    fast.chat_template = CHATML_TEMPLATE
    return fast


def save_chatml_qwen2(out: Path, tokenizer, seed: int = 0) -> Path:
    """A tiny random Qwen2 causal LM with a ChatML tokenizer (``chatml_tokenizer``)."""
    torch.manual_seed(seed)
    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
                      tie_word_embeddings=True)
    Qwen2ForCausalLM(cfg).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
