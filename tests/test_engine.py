"""TrainingEngine: schedule, torch path (clipping, resume, DDP) and DeepSpeed ZeRO 0-3 on CPU.

DeepSpeed and multi-rank runs go in subprocesses: deepspeed and torch.distributed keep process-global
state, so in-process runs would leak into each other. The subprocesses start together and run
while the in-process tests go on.
"""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from actors.engine import (
    OptimConfig,
    StrategySpec,
    TrainingEngine,
    lr_lambda,
    param_groups,
)

ROOT = Path(__file__).resolve().parents[1]

CPU = torch.device("cpu")
DS_RUNS = {"zero0": (0, False), "zero2_offload": (2, True), "zero3": (3, False)}
TIMEOUT = 240


def _env() -> dict[str, str]:
    env = {
        k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT")
    }
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    return env


def _spawn(
    script: str, tmp: Path, *args: str, env: dict[str, str] | None = None, log: str = "log"
) -> tuple[subprocess.Popen[bytes], Path]:
    """Start ``script`` with output to a file (a pipe could fill up and stall the child)."""
    path = tmp / "script.py"
    if not path.exists():
        path.write_text(textwrap.dedent(script))
    with open(tmp / f"{log}.txt", "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(path), *args],
            cwd=ROOT,
            env=env or _env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return proc, tmp / f"{log}.txt"


def _finish(run: tuple[subprocess.Popen[bytes], Path], result: Path) -> dict:
    proc, log = run
    proc.wait(timeout=TIMEOUT)
    assert proc.returncode == 0, log.read_text(errors="replace")[-4000:]
    return json.loads(result.read_text())


# ----------------------------------------------------------------------------------------- DeepSpeed

DS_SCRIPT = """
    import json, sys
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from actors.engine import OptimConfig, StrategySpec, TrainingEngine
    from alignment.generation import RolloutSpec, sample_responses

    stage, offload, out = int(sys.argv[1]), sys.argv[2] == "1", sys.argv[3]
    cfg = LlamaConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=2, intermediate_size=64)
    optim = OptimConfig(lr=1e-2, warmup_steps=1, total_steps=8, max_grad_norm=0.5, weight_decay=0.01)
    ids = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))

    def fresh(name, seed=0):
        torch.manual_seed(seed)
        model = LlamaForCausalLM(cfg)
        ds = name == "deepspeed"
        spec = StrategySpec(name=name, zero_stage=stage if ds else 0, offload=offload and ds)
        return TrainingEngine(model, optim, spec, torch.device("cpu"))

    def train(eng, steps):
        losses, stats = [], []
        for i in range(steps):
            # a PPO policy samples (under inference_mode) between its updates: that must leave the
            # engine's parameters fit for the next training pass, ZeRO-3's gathered ones included
            sample_responses(eng.module, ids[:, :4].tolist(), RolloutSpec(max_new_tokens=4), 0, 1, seed=i)
            loss = eng.forward(input_ids=ids, labels=ids).loss
            eng.backward(loss)
            stats.append(eng.step())
            losses.append(loss.item())
        return losses, stats

    ref_losses, ref_stats = train(fresh("torch"), 8)  # torch path first: deepspeed not imported yet
    no_ds_import = "deepspeed" not in sys.modules
    eng = fresh("deepspeed")
    losses, stats = train(eng, 8)
    import deepspeed

    def full_state(e):
        with deepspeed.zero.GatheredParameters(list(e.module.parameters()), enabled=stage == 3):
            return {k: v.detach().float().clone() for k, v in e.module.state_dict().items()}

    final = full_state(eng)
    eng.save_model(out + "/model", lambda m, p: m.save_pretrained(p))
    eng.save_checkpoint(out + "/ckpt")
    loaded = LlamaForCausalLM.from_pretrained(out + "/model").state_dict()
    same = set(loaded) == set(final) and all(torch.equal(loaded[k].float(), final[k]) for k in final)
    torch.manual_seed(0)
    moved = any(not torch.equal(v, final[k]) for k, v in LlamaForCausalLM(cfg).state_dict().items())

    resumed = fresh("deepspeed", seed=123)
    resumed.load_checkpoint(out + "/ckpt")
    after = [train(e, 1) + (e.global_step,) for e in (eng, resumed)]
    a, b = full_state(eng), full_state(resumed)
    resume_same = all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    json.dump(dict(losses=losses, stats=stats, ref_losses=ref_losses, ref_stats=ref_stats, same=same,
                   moved=moved, after=after, resume_same=resume_same, no_ds_import=no_ds_import),
              open(out + "/result.json", "w"))
"""


@pytest.fixture(scope="module", autouse=True)
def ds_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple]:
    runs = {}
    for name, (stage, offload) in DS_RUNS.items():
        tmp = tmp_path_factory.mktemp(name)
        runs[name] = (_spawn(DS_SCRIPT, tmp, str(stage), str(int(offload)), str(tmp)), tmp / "result.json")
    yield runs
    for (proc, _), _ in runs.values():
        if proc.poll() is None:
            proc.kill()


# ------------------------------------------------------------------------------------------- torch


def test_lr_lambda_shape() -> None:
    w, total, m = 10, 100, 0.1
    values = [lr_lambda(s, w, total, m) for s in range(total + 1)]
    assert values[0] == 0.0 and values[5] == pytest.approx(0.5) and values[w] == pytest.approx(1.0)
    assert values[total] == pytest.approx(m) and lr_lambda(total + 50, w, total, m) == pytest.approx(m)
    assert all(a < b for a, b in itertools.pairwise(values[: w + 1]))
    assert all(a > b for a, b in itertools.pairwise(values[w:]))
    mid = (w + total) // 2
    assert values[mid] == pytest.approx(m + (1 - m) * 0.5)
    assert lr_lambda(0, 0, 10, 0.0) == 1.0 and lr_lambda(10, 0, 10, 0.0) == pytest.approx(0.0)
    assert max(values) == pytest.approx(1.0) and min(values[w:]) >= m - 1e-12


def _mlp(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Linear(8, 16), torch.nn.LayerNorm(16), torch.nn.Tanh(), torch.nn.Linear(16, 1)
    )


def _data() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    return x, torch.sin(x @ torch.randn(8, 1, generator=g))


def _train(engine: TrainingEngine, steps: int) -> tuple[list[float], list[dict[str, float]]]:
    x, y = _data()
    losses, stats = [], []
    for _ in range(steps):
        loss = torch.nn.functional.mse_loss(engine.forward(x), y)
        engine.backward(loss)
        stats.append(engine.step())
        losses.append(loss.item())
    return losses, stats


def test_param_groups_skip_bias_and_norm() -> None:
    model = _mlp()
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4  # two biases, norm weight and bias
    model[0].weight.requires_grad_(False)
    assert sum(len(g["params"]) for g in param_groups(model, 0.1)) == 5


def test_torch_engine_trains_and_schedules() -> None:
    optim = OptimConfig(lr=3e-2, warmup_steps=5, total_steps=60, weight_decay=0.01)
    engine = TrainingEngine(_mlp(), optim, StrategySpec(), CPU)
    assert engine.module is engine._model and not isinstance(
        engine._wrapped, torch.nn.parallel.DistributedDataParallel
    )
    losses, stats = _train(engine, 60)
    assert losses[-1] < 0.2 * losses[0]
    assert [s["lr"] for s in stats] == pytest.approx([3e-2 * lr_lambda(i, 5, 60, 0.1) for i in range(60)])
    assert engine.global_step == 60 and engine.lr == pytest.approx(3e-3)
    assert all(p.grad is None for p in engine.module.parameters())


def test_torch_engine_clips_global_grad_norm() -> None:
    x, y = _data()
    reference = _mlp()
    torch.nn.functional.mse_loss(reference(x), y).backward()
    expected = torch.nn.utils.get_total_norm([p.grad for p in reference.parameters()])

    moved, seen = {}, []
    for max_norm in (1e3, 1e-9):
        engine = TrainingEngine(_mlp(), OptimConfig(lr=1e-2, max_grad_norm=max_norm), StrategySpec(), CPU)
        params = list(engine.module.parameters())
        engine.optimizer.register_step_pre_hook(
            lambda *_, ps=params: seen.append(torch.nn.utils.get_total_norm([p.grad for p in ps]))
        )
        before = [p.detach().clone() for p in engine.module.parameters()]
        _, (stats,) = _train(engine, 1)
        assert stats["grad_norm"] == pytest.approx(expected.item(), rel=1e-5)  # pre-clip norm
        moved[max_norm] = sum((p - b).norm() for p, b in zip(engine.module.parameters(), before)).item()
    assert seen[0].item() == pytest.approx(expected.item(), rel=1e-5)  # norm below 1e3: untouched
    assert seen[1].item() <= 1e-9 * (1 + 1e-4)
    assert expected > 1e-3 and moved[1e-9] < 0.01 * moved[1e3]


def test_torch_checkpoint_resume(tmp_path: Path) -> None:
    optim = OptimConfig(lr=1e-2, warmup_steps=2, total_steps=10)
    a = TrainingEngine(_mlp(), optim, StrategySpec(), CPU)
    _train(a, 4)
    a.save_checkpoint(tmp_path / "ckpt")
    b = TrainingEngine(_mlp(seed=7), optim, StrategySpec(), CPU)
    b.load_checkpoint(tmp_path / "ckpt")
    assert b.global_step == 4 and b.lr == pytest.approx(a.lr)
    (la,), (sa,) = _train(a, 1)
    (lb,), (sb,) = _train(b, 1)
    assert la == lb and sa == sb
    assert all(torch.equal(p, q) for p, q in zip(a.module.parameters(), b.module.parameters()))


def test_torch_bf16_autocast_and_save_model(tmp_path: Path) -> None:
    engine = TrainingEngine(_mlp(), OptimConfig(lr=1e-2), StrategySpec(bf16=True), CPU)
    x, _ = _data()
    assert engine.forward(x).dtype == torch.bfloat16
    assert engine.module[0].weight.dtype == torch.float32  # master weights stay fp32
    engine.save_model(tmp_path / "m.pt", lambda m, p: torch.save(m.state_dict(), p))
    saved = torch.load(tmp_path / "m.pt")
    assert all(torch.equal(saved[k], v) for k, v in engine.module.state_dict().items())


def test_gradient_checkpointing_and_validation() -> None:
    calls = []

    class Ckpt(torch.nn.Linear):
        def gradient_checkpointing_enable(self) -> None:
            calls.append(True)

    TrainingEngine(Ckpt(2, 2), OptimConfig(lr=1.0), StrategySpec(gradient_checkpointing=True), CPU)
    TrainingEngine(torch.nn.Linear(2, 2), OptimConfig(lr=1.0), StrategySpec(gradient_checkpointing=True), CPU)
    assert calls == [True]
    with pytest.raises(ValueError, match="unknown strategy"):
        TrainingEngine(_mlp(), OptimConfig(lr=1.0), StrategySpec(name="fsdp"), CPU)
    with pytest.raises(ValueError, match="stage 0 cannot offload"):
        TrainingEngine(_mlp(), OptimConfig(lr=1.0), StrategySpec(name="deepspeed", offload=True), CPU)
    with pytest.raises(ValueError, match="0..3"):
        TrainingEngine(_mlp(), OptimConfig(lr=1.0), StrategySpec(name="deepspeed", zero_stage=4), CPU)


DDP_SCRIPT = """
    import json, sys
    import torch, torch.distributed as dist
    from actors.engine import OptimConfig, StrategySpec, TrainingEngine

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    engine = TrainingEngine(model, OptimConfig(lr=1e-2), StrategySpec(), torch.device("cpu"))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(rank))  # different data per rank
    for _ in range(3):
        loss = engine.forward(x).pow(2).mean()
        engine.backward(loss)
        stats = engine.step()
    engine.save_model(sys.argv[1] + "/model.pt", lambda m, p: torch.save(m.state_dict(), p))
    params = [p.tolist() for p in engine.module.parameters()]
    json.dump({"ddp": type(engine._wrapped).__name__, "params": params, "grad_norm": stats["grad_norm"],
               "unwrapped": type(engine.module).__name__}, open(f"{sys.argv[1]}/rank{rank}.json", "w"))
    dist.destroy_process_group()
"""


def test_torch_ddp_two_ranks(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    procs = [
        _spawn(
            DDP_SCRIPT,
            tmp_path,
            str(tmp_path),
            env={
                **_env(),
                "MASTER_ADDR": "127.0.0.1",
                "MASTER_PORT": port,
                "RANK": str(r),
                "WORLD_SIZE": "2",
            },
            log=f"rank{r}",
        )
        for r in range(2)
    ]
    r0, r1 = (_finish(p, tmp_path / f"rank{i}.json") for i, p in enumerate(procs))
    assert r0["ddp"] == "DistributedDataParallel" and r0["unwrapped"] == "Sequential"
    assert r0["params"] == r1["params"] and r0["grad_norm"] == r1["grad_norm"]  # grads were all-reduced
    assert (tmp_path / "model.pt").exists()


@pytest.mark.parametrize("run", list(DS_RUNS))
def test_deepspeed_zero_on_cpu(ds_runs: dict, run: str) -> None:
    r = _finish(*ds_runs[run])
    losses, stats = r["losses"], r["stats"]
    assert r["no_ds_import"], "torch path must not import deepspeed"
    # warmup step 0 has lr 0, then the loss falls steadily on the fixed batch
    assert losses[-1] < losses[1] - 0.5
    assert all(b < a for a, b in itertools.pairwise(losses[1:]))
    # same trajectory, pre-clip grad norms and lrs as the plain torch engine
    assert losses == pytest.approx(r["ref_losses"], rel=1e-4)
    for got, ref in zip(stats, r["ref_stats"]):
        assert got["grad_norm"] == pytest.approx(ref["grad_norm"], rel=1e-3)
        assert got["lr"] == pytest.approx(ref["lr"])
    assert [s["lr"] for s in stats] == pytest.approx([1e-2 * lr_lambda(i, 1, 8, 0.1) for i in range(8)])
    assert r["moved"] and r["same"], "saved model must load with from_pretrained and equal trained weights"
    ((loss_a,), (stats_a,), step_a), ((loss_b,), (stats_b,), step_b) = r["after"]
    assert loss_a == pytest.approx(loss_b, rel=1e-6) and stats_a["lr"] == stats_b["lr"]
    assert stats_a["grad_norm"] == pytest.approx(stats_b["grad_norm"], rel=1e-4)
    assert step_a == step_b == 9 and r["resume_same"], "resume must restore model, optimizer and scheduler"
