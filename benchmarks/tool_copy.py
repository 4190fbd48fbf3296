"""Tool use of a trained model on the world's tool requests: how often it calls the task's tool,
how often its command copies the request's expression exactly, and how often its final answer is
right, per kind of request (arithmetic, equation, fact).

    python benchmarks/tool_copy.py CHECKPOINT --n-prompts 400

``CHECKPOINT`` is a policy directory of the lab's cache (``<cache>/sft/<key>``, ``pat/<key>``,
``ppo/<key>``, …): its tokenizer and its ``lab_artifact.json``, which gives the world (seed, tool
share) whose test prompts are used, and for a PAT model the quality tag it generates at
(``--tool-share``, ``--world-seed`` and ``--quality`` override them, and are needed for a
directory without that file). Replies are sampled with the evaluation's default settings
(``eval.*``, batches of ``eval.batch_size``) and the tools on; the counts follow the gold judge's rules
(``alignment.world.categories.tool_use``). Prints a table; ``--out`` writes it as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from alignment.models.causal_lm import load_causal_lm  # noqa: E402
from alignment.models.tokenizer import load_tokenizer  # noqa: E402
from alignment.tool_use import ToolReply, generate_with_tools  # noqa: E402
from alignment.tools import parse_calls  # noqa: E402
from alignment.world import World, WorldPrompt  # noqa: E402
from alignment.world.categories.tool_use import answer_right, called, is_tool_task  # noqa: E402
from experiments.config import LabConfig, WorldConfig  # noqa: E402
from experiments.runtime.context import make_world  # noqa: E402
from experiments.runtime.specs import sampling_spec  # noqa: E402


def tool_copy(checkpoint: str, world: World, n_prompts: int, seed: int = 0,
              quality: int | None = None) -> dict[str, dict[str, int]]:
    """Per kind of tool request: ``requests``; ``calls``, the replies whose Commands call the task's
    tool and nothing else, every line well formed (the judge's rule); ``copied``, those of them
    with a call whose argument is the request's expression, character for character (arithmetic
    and equations); ``right``, the replies with the right final answer."""
    prompts = [p for p in world.prompts("test", n_prompts) if is_tool_task(p)]
    if not prompts:
        raise ValueError(f"no tool requests among {n_prompts} test prompts at tool share {world.spec.tool_share}")
    tokenizer = load_tokenizer(checkpoint)
    model = load_causal_lm(checkpoint, tokenizer).eval()
    cfg = LabConfig()
    replies, _ = generate_with_tools(model, tokenizer, [p.conversation() for p in prompts], sampling_spec(cfg),
                                     quality=quality, batch_size=cfg.eval.batch_size, seed=seed)
    return score(prompts, replies)


def score(prompts: Sequence[WorldPrompt], replies: Sequence[ToolReply]) -> dict[str, dict[str, int]]:
    """The table of :func:`tool_copy` for given replies to the world's tool requests."""
    table: dict[str, dict[str, int]] = {}
    for prompt, reply in zip(prompts, replies, strict=True):
        kind = prompt.task.spec["kind"]
        row = table.setdefault(kind, {"requests": 0, "calls": 0, "copied": 0, "right": 0})
        row["requests"] += 1
        calls = called(prompt.task, reply.plugin)
        row["calls"] += calls
        # within a call every name is the task's tool (the judge's rule), so only the arguments matter
        row["copied"] += calls and kind != "fact" and any(
            arg == prompt.task.spec["call"] for _, arg in parse_calls(reply.commands or ""))
        row["right"] += answer_right(prompt.task, reply.reply)
    return table


def _settings(checkpoint: Path, args: argparse.Namespace) -> tuple[WorldConfig, int | None]:
    """The world and the quality tag: the checkpoint's ``lab_artifact.json``, with the flags over it."""
    meta = checkpoint / "lab_artifact.json"
    cfg = json.loads(meta.read_text()).get("config", {}) if meta.is_file() else {}
    saved = cfg.get("data", {}).get("world")
    if saved is None and args.tool_share is None:
        raise SystemExit(f"{checkpoint}: no lab_artifact.json with the world's tool share; pass --tool-share")
    world = WorldConfig(**(saved or {}))
    if args.tool_share is not None:
        world.tool_share = args.tool_share
    if args.world_seed is not None:
        world.seed = args.world_seed
    if not 0 < world.tool_share < 1:
        raise SystemExit(f"--tool-share {world.tool_share}: a share in (0, 1)")
    quality = args.quality if args.quality is not None else cfg.get("pat", {}).get("inference_tag")
    if quality is not None and not 0 <= quality <= 100:
        raise SystemExit(f"--quality {quality}: a tag in [0, 100]")
    return world, quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--tool-share", type=float, help="the world's tool share (default: the checkpoint's)")
    parser.add_argument("--world-seed", type=int, help="the world's seed (default: the checkpoint's)")
    parser.add_argument("--quality", type=int, help="PAT's tag (default: a PAT checkpoint's inference tag)")
    parser.add_argument("--n-prompts", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    for name in ("config.json", "tokenizer.json"):
        if not (args.checkpoint / name).is_file():
            raise SystemExit(f"{args.checkpoint}: not a policy directory with its tokenizer (no {name})")
    if args.n_prompts < 1:
        raise SystemExit(f"--n-prompts {args.n_prompts}: at least 1")
    world, quality = _settings(args.checkpoint, args)
    torch.set_num_threads(args.threads)
    try:
        table = tool_copy(str(args.checkpoint), make_world(world), args.n_prompts, args.seed, quality)
    except ValueError as e:
        raise SystemExit(str(e)) from None
    print(f"tool share {world.tool_share}, world seed {world.seed}, quality tag {quality}")
    print(f"{'kind':<12}{'requests':>10}{'calls':>8}{'copied':>8}{'right':>8}")
    for kind, row in table.items():
        print(f"{kind:<12}{row['requests']:>10}{row['calls']:>8}{row['copied'] if kind != 'fact' else '-':>8}"
              f"{row['right']:>8}")
    if args.out:
        body: dict[str, Any] = {"checkpoint": str(args.checkpoint), "tool_share": world.tool_share,
                                "world_seed": world.seed, "quality": quality, "n_prompts": args.n_prompts,
                                "seed": args.seed, "kinds": table}
        args.out.write_text(json.dumps(body, indent=2) + "\n")


if __name__ == "__main__":
    main()
