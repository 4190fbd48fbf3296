"""LoRA on a pretrained model in the MOSS format: the embedding rows of the special tokens the lab
adds are new, so they train with the adapters (peft's trainable tokens), every other row stays as
it was, and the trained rows are in the merged, saved model."""

from __future__ import annotations

import torch
from transformers import AutoTokenizer

from alignment.chat_format import EOS_TOKEN, SPECIAL_TOKENS
from alignment.data.batching import collate
from alignment.loss_mask import encode_many
from alignment.losses.lm import masked_lm_loss
from alignment.models.causal_lm import LoraSpec, added_token_ids, apply_lora, load_causal_lm, mergeable, merged_weights
from alignment.models.shared_prefix import lm_hidden_states, output_head
from alignment.models.tokenizer import load_tokenizer
from tests.builders import chatml_tokenizer, save_chatml_qwen2


def test_new_token_rows_train_with_lora_and_are_saved(world, tmp_path):
    ckpt = save_chatml_qwen2(tmp_path / "qwen2", chatml_tokenizer(world.corpus(200)))
    tok = load_tokenizer(str(ckpt))  # the MOSS format: its special tokens are added
    model = load_causal_lm(str(ckpt), tok)
    new = added_token_ids(tok, str(ckpt))  # the base checkpoint's tokenizer lacks them: their rows are new
    assert sorted(new) == sorted(tok.convert_tokens_to_ids(list(SPECIAL_TOKENS)))
    assert min(new) >= len(AutoTokenizer.from_pretrained(ckpt)) and tok.convert_tokens_to_ids(EOS_TOKEN) in new
    before = model.get_input_embeddings().weight.detach().clone()
    model = apply_lora(model, LoraSpec(enabled=True, r=4), new)
    examples = encode_many([p.conversation("Fine.") for p in world.prompts("train", 4)], tok)
    batch = collate(examples, tok.pad_token_id)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        hidden = lm_hidden_states(model, batch["input_ids"], batch["attention_mask"])
        loss, _ = masked_lm_loss(hidden, batch["labels"], output_head(model))
        opt.zero_grad()
        loss.backward()
        opt.step()

    merged = mergeable(model)
    after = merged.get_input_embeddings().weight.detach()
    old = torch.ones(len(before), dtype=torch.bool)
    old[new] = False
    assert torch.equal(after[old], before[old]), "rows of the pretrained vocabulary changed"
    eom = tok.convert_tokens_to_ids(EOS_TOKEN)  # the token every reply ends with: it got gradient
    assert not torch.allclose(after[eom], before[eom])
    assert torch.equal(merged.get_output_embeddings().weight, after)  # the tied head reads the same rows

    sent = dict(merged_weights(model))  # what an inference engine is sent: the merged rows, no peft names
    assert not any("trainable_tokens" in n or "lora_" in n for n in sent)
    assert torch.equal(sent["model.embed_tokens.weight"], after)

    merged.save_pretrained(tmp_path / "saved")
    tok.save_pretrained(tmp_path / "saved")
    assert added_token_ids(tok, str(tmp_path / "saved")) == []  # saved after training: no row is new
    reloaded = load_causal_lm(str(tmp_path / "saved"), tok)
    assert torch.equal(reloaded.get_input_embeddings().weight, after)
