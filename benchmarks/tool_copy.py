"""Tool use of a trained model on the world's tool requests: how often it calls the task's tool,
how often its command copies the request's operands exactly, and how often its final answer is
right, per kind of request (arithmetic, equation, fact).

    python benchmarks/tool_copy.py CHECKPOINT --tool-share 0.5 --n-prompts 400

``CHECKPOINT`` is a policy directory with its tokenizer (an SFT, PAT or PPO artifact of the cache).
The test prompts are the world's (``data.world.seed`` 0 and the given ``--tool-share``: pass the
share the model was trained with to see its own test set); replies are sampled with the
evaluation's default settings and the tools on, as the lab's evaluation samples them. Prints a
table; ``--out`` writes it as JSON.
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

from alignment.generation import SamplingSpec  # noqa: E402
from alignment.models.causal_lm import load_causal_lm  # noqa: E402
from alignment.models.tokenizer import load_tokenizer  # noqa: E402
from alignment.tool_use import ToolReply, generate_with_tools  # noqa: E402
from alignment.tools import parse_calls  # noqa: E402
from alignment.world import World, WorldPrompt, WorldSpec  # noqa: E402
from alignment.world.categories.tool_use import TOOL_OF, answer_right, is_tool_task  # noqa: E402


def tool_copy(checkpoint: str, tool_share: float, n_prompts: int, world_seed: int = 0,
              seed: int = 0) -> dict[str, dict[str, int]]:
    """Per kind of tool request: ``requests``, ``calls`` (every call of the task's tool),
    ``copied`` (a call of the task's tool whose argument is the request's expression; arithmetic
    and equations) and
    ``right`` (the final answer)."""
    prompts = [p for p in World(WorldSpec(seed=world_seed, tool_share=tool_share)).prompts("test", n_prompts)
               if is_tool_task(p)]
    if not prompts:
        raise SystemExit(f"no tool requests among {n_prompts} test prompts at --tool-share {tool_share}")
    tokenizer = load_tokenizer(checkpoint)
    model = load_causal_lm(checkpoint, tokenizer).eval()
    replies, _ = generate_with_tools(model, tokenizer, [p.conversation() for p in prompts], SamplingSpec(),
                                     seed=seed)
    return score(prompts, replies)


def score(prompts: Sequence[WorldPrompt], replies: Sequence[ToolReply]) -> dict[str, dict[str, int]]:
    """The table of :func:`tool_copy` for given replies to the world's tool requests."""
    table: dict[str, dict[str, int]] = {}
    for prompt, reply in zip(prompts, replies, strict=True):
        kind = prompt.task.spec["kind"]
        calls = parse_calls(reply.commands or "")
        row = table.setdefault(kind, {"requests": 0, "calls": 0, "copied": 0, "right": 0})
        row["requests"] += 1
        row["calls"] += bool(calls) and all(name == TOOL_OF[kind] for name, _ in calls)
        row["copied"] += kind != "fact" and any(name == TOOL_OF[kind] and arg.strip() == prompt.task.spec["call"]
                                                for name, arg in calls)
        row["right"] += answer_right(prompt.task, reply.reply)
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--tool-share", type=float, default=0.1)
    parser.add_argument("--n-prompts", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0, help="the sampling seed")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    if not (Path(args.checkpoint) / "config.json").is_file():
        raise SystemExit(f"{args.checkpoint}: not a model directory (no config.json)")
    torch.set_num_threads(args.threads)
    table = tool_copy(args.checkpoint, args.tool_share, args.n_prompts, seed=args.seed)
    print(f"{'kind':<12}{'requests':>10}{'calls':>8}{'copied':>8}{'right':>8}")
    for kind, row in table.items():
        print(f"{kind:<12}{row['requests']:>10}{row['calls']:>8}{row['copied'] if kind != 'fact' else '-':>8}"
              f"{row['right']:>8}")
    if args.out:
        body: dict[str, Any] = {"checkpoint": args.checkpoint, "tool_share": args.tool_share,
                                "n_prompts": args.n_prompts, "seed": args.seed, "kinds": table}
        args.out.write_text(json.dumps(body, indent=2) + "\n")


if __name__ == "__main__":
    main()
