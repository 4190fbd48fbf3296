"""Model construction: tiny Llama, local checkpoints with the MOSS tokens, LoRA, value heads."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, LlamaConfig, LlamaForCausalLM

from alignment.chat_format import SPECIAL_TOKENS
from alignment.models.causal_lm import ArchSpec, LoraSpec, apply_lora, build_tiny, load_causal_lm, mergeable
from alignment.models.tokenizer import load_tokenizer
from alignment.models.value_head import last_token_index, load_value_model, sequence_scores, token_values

SMALL = ArchSpec(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2, max_position_embeddings=128)


def test_tiny_model_matches_tokenizer(tokenizer):
    model = build_tiny(SMALL, tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.convert_tokens_to_ids("<eom>")
    ids = tokenizer("<|Human|>: hi<eoh>", return_tensors="pt")["input_ids"]
    assert model(input_ids=ids).logits.shape == (1, ids.size(1), len(tokenizer))


def test_local_checkpoint_gets_moss_tokens_and_resized_embeddings(tmp_path, tokenizer):
    # a "foreign" checkpoint: its tokenizer lacks the MOSS tokens and has no pad token
    from alignment.models.tokenizer import train_bpe

    plain = train_bpe(["hello world"] * 20, 300)
    plain.add_special_tokens({"additional_special_tokens": []})
    base_dir = tmp_path / "base"
    cfg = LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2)
    LlamaForCausalLM(cfg).save_pretrained(base_dir)
    plain.save_pretrained(base_dir)
    tok = load_tokenizer(str(base_dir))
    model = load_causal_lm(str(base_dir), tok)
    assert model.get_input_embeddings().num_embeddings >= len(tok)
    for t in SPECIAL_TOKENS:
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1
    out = tmp_path / "out"
    model.save_pretrained(out)
    reloaded = AutoModelForCausalLM.from_pretrained(out, local_files_only=True)
    assert reloaded.get_input_embeddings().num_embeddings == model.get_input_embeddings().num_embeddings


def test_lora_trains_adapters_only_and_saves_merged(tmp_path, tokenizer):
    model = apply_lora(build_tiny(SMALL, tokenizer), LoraSpec(enabled=True, r=4, alpha=8))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    ids = torch.randint(0, len(tokenizer), (2, 12))
    for n, p in model.named_parameters():  # make the adapters non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    merged = mergeable(model)
    merged.save_pretrained(tmp_path / "m")
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "m", local_files_only=True)
    assert not any("lora" in n for n, _ in plain.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, expected, atol=1e-4, rtol=1e-4)
    assert any("lora_" in n for n, _ in model.named_parameters())  # the live model keeps its adapters


def test_merged_weights_are_the_merged_model_and_adapted_layers_bring_their_biases(tokenizer):
    """What a rollout engine is sent (``merged_weights``): all of it equals the merged model's state
    under the plain names; ``only_adapted`` is every parameter of the adapted layers (a Qwen2's
    q/k/v biases too), and the live adapters stay unmerged."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from alignment.models.causal_lm import merged_weights

    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2)
    model = apply_lora(Qwen2ForCausalLM(cfg), LoraSpec(enabled=True, r=4, alpha=8))
    for n, p in model.named_parameters():  # make the adapters non-trivial
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    full = dict(merged_weights(model))
    expected = mergeable(model).state_dict()
    assert full.keys() == expected.keys()
    for n, t in expected.items():
        torch.testing.assert_close(full[n], t)
    adapted = dict(merged_weights(model, only_adapted=True))
    layers = {f"model.layers.{i}.self_attn.{p}" for i in range(2) for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    with_bias = {n for n in layers if not n.endswith("o_proj")}
    assert adapted.keys() == {n + ".weight" for n in layers} | {n + ".bias" for n in with_bias}
    for n, t in adapted.items():
        torch.testing.assert_close(t, expected[n])
    assert all(torch.equal(t, before[n]) for n, t in model.state_dict().items())  # nothing merged in place


def test_value_head_reads_the_last_non_pad_token(tmp_path, tokenizer):
    build_tiny(SMALL, tokenizer).save_pretrained(tmp_path / "lm")
    vm = load_value_model(str(tmp_path / "lm"))
    assert isinstance(vm, torch.nn.Module) and vm.config.num_labels == 1
    torch.nn.init.normal_(vm.score.weight)
    ids = torch.randint(3, len(tokenizer), (2, 6))
    left = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1]])
    assert last_token_index(left).tolist() == [5, 5]
    assert last_token_index(right).tolist() == [2, 5]
    values = token_values(vm, ids, right)
    assert values.shape == (2, 6)
    torch.testing.assert_close(sequence_scores(vm, ids, right), torch.stack([values[0, 2], values[1, 5]]))
    vm.save_pretrained(tmp_path / "vm")
    again = AutoModelForSequenceClassification.from_pretrained(tmp_path / "vm", local_files_only=True)
    torch.testing.assert_close(sequence_scores(again, ids, right), sequence_scores(vm, ids, right))


def test_value_model_can_replace_the_last_layer(tmp_path, tokenizer):
    build_tiny(SMALL, tokenizer).save_pretrained(tmp_path / "lm")
    vm = load_value_model(str(tmp_path / "lm"), drop_last_layer=True)
    assert vm.config.num_hidden_layers == SMALL.num_layers - 1
    assert float(vm.score.weight.abs().sum()) == 0.0  # the head starts at zero


def test_value_model_on_lora_trains_adapters_and_head_and_saves_them_merged(tmp_path, tokenizer):
    """A preference model or critic on a pretrained model with LoRA: the decoder trains adapters
    only, the scalar head trains in full, and the saved model (adapters merged, the trained head in
    place) is a plain value model that scores as the live one does."""
    from alignment.losses.pairwise import pairwise_loss
    from alignment.models.causal_lm import save_merged

    build_tiny(SMALL, tokenizer).save_pretrained(tmp_path / "lm")
    vm = apply_lora(load_value_model(str(tmp_path / "lm")), LoraSpec(enabled=True, r=4, alpha=8), task_type="SEQ_CLS")
    trainable = {n for n, p in vm.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or ".score." in n for n in trainable)
    assert any(".score." in n for n in trainable) and any("lora_" in n for n in trainable)
    frozen = {n: p.detach().clone() for n, p in vm.named_parameters() if not p.requires_grad}
    ids = torch.randint(3, len(tokenizer), (4, 8))
    mask = torch.ones_like(ids)
    opt = torch.optim.AdamW([p for p in vm.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        scores = sequence_scores(vm, ids, mask)
        loss, _ = pairwise_loss(scores[:2], scores[2:])
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(torch.equal(p, frozen[n]) for n, p in vm.named_parameters() if not p.requires_grad)
    with torch.no_grad():
        live = sequence_scores(vm, ids, mask)
    assert float(live.abs().sum()) > 0  # the head left zero
    save_merged(vm, str(tmp_path / "pm"))
    saved = load_value_model(str(tmp_path / "pm"))  # a saved value model keeps its trained head
    assert not any("lora" in n for n, _ in saved.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(sequence_scores(saved, ids, mask), live, atol=1e-5, rtol=1e-5)


def test_scored_sequence_can_show_only_the_last_turns(tokenizer):
    from alignment.chat_format import Conversation, Turn, meta_instruction, written_body
    from alignment.sequences import scored_sequence

    ctx = Conversation(meta_instruction(), (Turn("Hi there.", "Hello!"), Turn("Who made you?", "")))
    full = scored_sequence(tokenizer, ctx, "Fudan University.", 512)
    last = scored_sequence(tokenizer, ctx, "Fudan University.", 512, context_turns=1)
    reply = tokenizer(written_body("Fudan University."), add_special_tokens=False)["input_ids"]
    assert full[-len(reply):] == last[-len(reply):] == reply
    assert len(last) < len(full)
    assert tokenizer.decode(last).startswith("<|Human|>: Who made you?")
    both = scored_sequence(tokenizer, ctx, "Fudan University.", 512, context_turns=2)  # only the meta drops out
    assert len(last) < len(both) < len(full) and full[-len(both):] == both


def test_scored_sequences_equal_one_by_one(tokenizer):
    from alignment.chat_format import Conversation, Turn, meta_instruction
    from alignment.sequences import scored_sequence, scored_sequences

    one = Conversation(meta_instruction(), (Turn("Hi there.", "Hello!"), Turn("Who made you?", "")))
    two = Conversation(meta_instruction(), (Turn("写一首诗。", ""),))
    contexts, replies = [one, two, one, two], ["Fudan University.", "", "Sure! " * 40, "我是MOSS。"]
    for turns, max_length in ((0, 512), (1, 512), (0, 30)):
        batch = scored_sequences(tokenizer, contexts, replies, max_length, turns)
        assert batch == [scored_sequence(tokenizer, c, r, max_length, turns) for c, r in zip(contexts, replies)]
        assert all(len(ids) <= max_length for ids in batch)
    with pytest.raises(ValueError, match="2 contexts for 1 replies"):
        scored_sequences(tokenizer, [one, two], ["hi"], 512)


def _grads(model, logits, mask):
    model.zero_grad()
    loss = (logits.log_softmax(-1)[..., 3] * mask).sum() / mask.sum()
    loss.backward()
    return [p.grad.clone() for p in model.parameters()]


def test_common_prefix_length_stops_at_the_first_difference_and_before_the_shortest_row_ends():
    from alignment.models.shared_prefix import common_prefix_length

    ids = torch.tensor([[5, 6, 7, 8, 9], [5, 6, 7, 1, 0], [5, 6, 7, 8, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0], [1, 1, 1, 1, 0]])
    assert common_prefix_length(ids, mask) == 3
    same = torch.tensor([[5, 6, 7], [5, 6, 7]])
    assert common_prefix_length(same, torch.ones_like(same)) == 2  # every row keeps one token to run
    left_padded = torch.tensor([[0, 5, 6], [5, 6, 7]])
    assert common_prefix_length(left_padded, torch.tensor([[0, 1, 1], [1, 1, 1]])) == 0


def test_shared_prefix_forward_gives_the_plain_logits_and_gradients(tokenizer):
    from alignment.models.shared_prefix import lm_hidden_states, output_head

    def causal_lm_logits(model, ids, mask, min_shared):  # the head applied to every position
        return output_head(model)(lm_hidden_states(model, ids, mask, min_shared=min_shared))

    model = build_tiny(SMALL, tokenizer)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, len(tokenizer), (4, 40), generator=g)
    ids[:, :20] = ids[0, :20]  # a 20-token prefix common to every row, then right padding
    lengths = torch.tensor([40, 31, 25, 36])
    mask = (torch.arange(40)[None] < lengths[:, None]).long()
    ids[mask == 0] = tokenizer.pad_token_id
    plain = model(input_ids=ids, attention_mask=mask).logits
    shared = causal_lm_logits(model, ids, mask, min_shared=8)
    real = mask.bool()
    assert torch.allclose(plain[real], shared[real], atol=1e-5)
    for a, b in zip(_grads(model, plain, mask), _grads(model, causal_lm_logits(model, ids, mask, min_shared=8), mask)):
        assert torch.allclose(a, b, atol=1e-5)
    # the prefix really ran once: a second call with the prefix broken in one row falls back
    broken = ids.clone()
    broken[1, 0] = ids[0, 0] + 1
    assert torch.allclose(model(input_ids=broken, attention_mask=mask).logits[real],
                          causal_lm_logits(model, broken, mask, min_shared=8)[real], atol=1e-5)


def test_lm_loss_runs_the_head_on_labelled_positions_only(tokenizer):
    from alignment.losses.lm import masked_lm_loss
    from alignment.models.shared_prefix import lm_hidden_states, output_head

    model = build_tiny(SMALL, tokenizer)
    ids = torch.randint(5, len(tokenizer), (3, 24), generator=torch.Generator().manual_seed(2))
    ids[:, :18] = ids[0, :18]
    mask = torch.ones_like(ids)
    mask[1, 20:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :19] = -100  # the loss covers the replies, after the shared prompt
    seen = []

    def head(h):
        seen.append(h.shape[0])
        return output_head(model)(h)

    loss, n = masked_lm_loss(lm_hidden_states(model, ids, mask, min_shared=8), labels, head)
    assert seen == [int(n)] == [(labels[:, 1:] != -100).sum().item()]
    logits = model(input_ids=ids, attention_mask=mask).logits  # the plain way: every position
    plain = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), labels[:, 1:].reshape(-1))
    assert torch.allclose(loss, plain, atol=1e-5)
    (a,) = torch.autograd.grad(loss, [model.model.layers[0].mlp.up_proj.weight])
    (b,) = torch.autograd.grad(plain, [model.model.layers[0].mlp.up_proj.weight])
    assert torch.allclose(a, b, atol=1e-6)


def test_shared_prefix_hidden_states_match_for_a_value_model(tmp_path, tokenizer):
    from alignment.models.shared_prefix import last_hidden_states

    build_tiny(SMALL, tokenizer).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    model = load_value_model(str(tmp_path / "lm"))
    ids = torch.randint(5, len(tokenizer), (3, 30), generator=torch.Generator().manual_seed(1))
    ids[:, :18] = ids[0, :18]
    mask = torch.ones_like(ids)
    mask[2, 24:] = 0
    plain = model(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-1]
    shared = last_hidden_states(model, ids, mask, min_shared=8)
    assert shared.shape == plain.shape
    assert torch.allclose(plain[mask.bool()], shared[mask.bool()], atol=1e-5)
    assert torch.allclose(token_values(model, ids, mask)[mask.bool()],
                          model.score(plain).squeeze(-1)[mask.bool()], atol=1e-5)


def test_preference_actor_scores_in_input_order_whatever_the_lengths(tmp_path, tokenizer):
    from actors.engine import StrategySpec
    from actors.preference import PreferenceActor

    build_tiny(SMALL, tokenizer).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")
    actor = PreferenceActor(rank=0, world_size=1, num_threads=1)
    actor.init_model(str(tmp_path / "lm"), True, StrategySpec())
    g = torch.Generator().manual_seed(3)
    seqs = [torch.randint(5, len(tokenizer), (int(n),), generator=g).tolist() for n in (9, 3, 14, 5, 3, 11, 7)]
    alone = [actor.score([s])[0] for s in seqs]  # batches of one: no padding at all
    batched = actor.score(seqs, batch_size=3)  # cut by length, so not in input order
    assert torch.allclose(torch.tensor(batched), torch.tensor(alone), atol=1e-5)
