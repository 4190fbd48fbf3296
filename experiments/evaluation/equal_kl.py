"""Every method measured alike on the reward-KL plane, and read at equal KL.

Every point comes from ``frontier_points``: the first ``pat.control_prompts`` test prompts, the
policy sampling as PPO trains (temperature 1, no top-p, ``algo.max_new_tokens``), the KL to the SFT
model the mean over replies of the summed log-ratio (k1) of the sampled tokens, the gold score and
the preference model's of the same replies. The SFT model's own samples (``frontier["sft"]``, KL 0)
are the reference of the win rates. Paths:

- PPO, GRPO and RLOO by iteration: SFT, the policies saved along training (``algo.path_points``), the
  trained policy;
- Quark by round: SFT, each round's policy (round 1 is PAT's model), the last round's, all prompted
  with ``pat.inference_tag``;
- PAT by tag, lowest to highest;
- best-of-n by n, on ``bon.n_max`` samples of the SFT model per prompt drawn like the others (the
  same prompts and sampler); its KL is the analytic ``log n - (n-1)/n``, an upper bound, not an
  estimate (``"kl_bound": true``).

``at_kl`` reads each path at ``alignment.statistics.equal_kl.BUDGETS`` (interpolated, never extrapolated):
``at_kl.<budget>.<method>`` holds the gold score and the gold win rate against SFT's samples.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alignment.statistics.best_of_n import analytic_kl, pick_groups
from alignment.statistics.equal_kl import BUDGETS, at_budget, t_interval, win_share
from experiments.evaluation.head_to_head import frontier_points
from experiments.runtime.context import RunContext

# the methods whose path is SFT -> the policies saved along training -> the final policy, and what
# their knob counts (the one table the frontier, the equal-KL table and the report read)
SNAPSHOT_PATHS = {"ppo": "iteration", "grpo": "iteration", "rloo": "iteration", "quark": "round"}
# the paths that start at the SFT model (their step 0 is the policy before training). Quark's starts at
# its round 1, the PAT model: no trained policy lies between SFT and it, so nothing is read in between
STARTS_AT_SFT = ("ppo", "grpo", "rloo")


def budget_key(budget: float) -> str:
    return f"{budget:g}"


def control_prompts(ctx: RunContext) -> list[Any]:
    return ctx.test_prompts[: ctx.cfg.pat.control_prompts]


def sft_point(ctx: RunContext, sft_path: Path, pm_path: Path) -> dict[str, Any]:
    """The SFT model's own point (KL 0 up to float error): the reference of every path's win rate."""
    return frontier_points(ctx, "sft", sft_path, sft_path, pm_path, control_prompts(ctx), [None])[0] | {"step": 0}


def training_path(ctx: RunContext, name: str, snapshots: list[tuple[int, Path]], sft_path: Path,
                  pm_path: Path) -> list[dict[str, Any]]:
    """One point per policy saved along training (``(iteration, directory)``), in order."""
    return [frontier_points(ctx, name, path, sft_path, pm_path, control_prompts(ctx), [None])[0] | {"step": step}
            for step, path in snapshots]


def bon_path(ctx: RunContext, sft_path: Path, pm_path: Path) -> list[dict[str, Any]]:
    """Best-of-n by n (``bon.ns``) on ``bon.n_max`` samples per control prompt drawn like every other
    point, the pick the preference model's best of the first n."""
    n_max, prompts = ctx.cfg.bon.n_max, control_prompts(ctx)
    repeated = [p for p in prompts for _ in range(n_max)]
    drawn = frontier_points(ctx, "bon", sft_path, sft_path, pm_path, repeated, [None])[0]
    points = []
    for n in sorted(set(ctx.cfg.bon.ns)):
        picks = pick_groups(drawn["pms"], n_max, n)
        pms = [drawn["pms"][i] for i in picks]
        golds = [drawn["golds"][i] for i in picks] if drawn["golds"] is not None else None
        points.append({"n": n, "kl": analytic_kl(n), "kl_bound": True, "pm": sum(pms) / len(pms), "pms": pms,
                       "gold": sum(golds) / len(golds) if golds else None, "golds": golds, "n_prompts": len(prompts)})
    return points


def paths(frontier: dict[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """Each method's path in a job's ``results["frontier"]``, in the order its knob moves it."""
    out: dict[str, list[dict[str, Any]]] = {}
    sft = frontier.get("sft")
    for m in SNAPSHOT_PATHS:
        if m in frontier and f"{m}_path" in frontier and sft is not None:
            out[m] = [*([sft] if m in STARTS_AT_SFT else []), *frontier[f"{m}_path"], *frontier[m]]
    if "pat" in frontier:
        out["pat"] = sorted(frontier["pat"], key=lambda p: -1 if p["tag"] is None else p["tag"])
    if "bon_path" in frontier:
        out["bon"] = frontier["bon_path"]
    return out


def job_at_kl(frontier: dict[str, Any], budgets: tuple[float, ...] = BUDGETS) -> dict[str, dict[str, Any]]:
    """``{budget: {method: {"gold", "win_rate"}}}`` of one job's paths (a value is None where the path
    does not reach the budget); win rates need the SFT point and the gold judge (the world)."""
    sft = frontier.get("sft")
    table: dict[str, dict[str, Any]] = {}
    for m, path in paths(frontier).items():
        kls = [p["kl"] for p in path]
        golds = [p["gold"] for p in path]
        wins = ([win_share(p["golds"], sft["golds"]) for p in path]
                if sft is not None and sft.get("golds") and all(p.get("golds") for p in path) else None)
        for b in budgets:
            row = {"gold": at_budget(kls, golds, b) if None not in golds else None,
                   "win_rate": at_budget(kls, wins, b) if wins else None,
                   "kl_range": [min(kls), max(kls)], "kl_bound": bool(path[-1].get("kl_bound"))}
            table.setdefault(budget_key(b), {})[m] = row
    return table


def final_kls(frontier: dict[str, Any], inference_tag: int) -> dict[str, float]:
    """Each method's final KL, measured alike: PAT's at its inference tag, best-of-n's the analytic
    bound at the largest n."""
    out = {m: frontier[m][0]["kl"] for m in (*SNAPSHOT_PATHS, "dpo") if frontier.get(m)}
    at_tag = [p for p in frontier.get("pat", []) if p["tag"] == inference_tag]
    if at_tag:
        out["pat"] = at_tag[0]["kl"]
    if frontier.get("bon_path"):
        out["bon"] = frontier["bon_path"][-1]["kl"]
    return out


def sweep_at_kl(per_job: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """The jobs' ``at_kl`` tables (one per seed and method) combined over seeds: for each budget and
    method, the mean gold score and gold win rate with t-intervals over the seeds that reached the
    budget, and how many did."""
    values: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for table in per_job:
        for b, by_method in table.items():
            for m, row in by_method.items():
                values.setdefault((b, m), []).append(row)
    out: dict[str, dict[str, Any]] = {}
    for (b, m), rows in sorted(values.items()):
        cell: dict[str, Any] = {"seeds": len(rows), "reached": sum(r["gold"] is not None for r in rows),
                                "kl_range": [min(r["kl_range"][0] for r in rows), max(r["kl_range"][1] for r in rows)],
                                "kl_bound": any(r["kl_bound"] for r in rows)}
        for key in ("gold", "win_rate"):
            xs = [r[key] for r in rows if r[key] is not None]
            cell[key] = sum(xs) / len(xs) if xs and len(xs) == len(rows) else None
            cell[f"{key}_ci"] = list(t_interval(xs)) if cell[key] is not None and len(xs) > 1 else None
        out.setdefault(b, {})[m] = cell
    return out


def print_at_kl(table: dict[str, dict[str, Any]]) -> None:
    """The equal-KL table on the console: gold score and gold win rate against SFT's samples."""
    reached = {b: {m: r for m, r in by_method.items() if r["gold"] is not None} for b, by_method in table.items()}
    for m in sorted({m for by_method in table.values() for m in by_method}):
        if all(m not in by_method for by_method in reached.values()):
            lo, hi = next(iter(table.values()))[m]["kl_range"]
            print(f"  at equal KL: {m.upper()}'s path spans {lo:.2f}-{hi:.2f} nats and reaches none of the budgets "
                  f"({', '.join(table)} nats)")
    if any(reached.values()):
        print("  at equal KL (gold score / gold win rate vs SFT's samples):")
    for b, by_method in reached.items():
        if by_method:
            print(f"    {b} nats: " + ", ".join(f"{m.upper()} {_num(r['gold'])} / {_num(r['win_rate'])}"
                                            for m, r in by_method.items()))


def _num(v: float | None) -> str:
    return "-" if v is None else f"{v:.3f}"


def _cell(row: dict[str, Any], key: str) -> str:
    if row.get(key) is None:
        lo, hi = row["kl_range"]
        where = f"the path spans {lo:.2f}–{hi:.2f} nats"
        return f"off the path ({row['reached']}/{row['seeds']} seeds reach it; {where})" if "seeds" in row else \
            f"off the path ({where})"
    ci = row.get(f"{key}_ci")
    return f"{row[key]:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def at_kl_markdown(table: dict[str, dict[str, Any]], names: dict[str, str]) -> list[str]:
    """The equal-KL table of a report: one row per budget and method, gold win rate against SFT's
    samples and mean gold, each with its t-interval over seeds."""
    if not table:
        return []
    lines = ["| KL budget (nats) | method | gold win rate vs SFT [95% CI] | mean gold [95% CI] |",
             "| --- | --- | --- | --- |"]
    for b, by_method in table.items():
        for m, row in sorted(by_method.items(), key=lambda kv: -(kv[1].get("win_rate") or -1.0)):
            name = names.get(m, m) + (" (analytic KL bound)" if row.get("kl_bound") else "")
            lines.append(f"| {b} | {name} | {_cell(row, 'win_rate')} | {_cell(row, 'gold')} |")
    return lines


def at_kl_sentences(table: dict[str, dict[str, Any]], names: dict[str, str]) -> list[str]:
    """One sentence per budget: the method with the highest gold win rate against SFT's samples,
    and whether its interval clears every other method's (a lead) or overlaps some (no lead)."""
    out = []
    for b, by_method in table.items():
        known = {m: r for m, r in by_method.items() if r.get("win_rate") is not None}
        if not known:
            continue
        best, row = max(known.items(), key=lambda kv: kv[1]["win_rate"])
        others = {m: r for m, r in known.items() if m != best}
        text = (f"At {b} nats of KL, {names.get(best, best)} has the highest gold win rate against SFT's samples "
                f"({_cell(row, 'win_rate')})")
        if not others:
            out.append(text + ", the only method whose path reaches it.")
            continue
        ci = row.get("win_rate_ci")
        overlap = [names.get(m, m) for m, r in others.items()
                   if ci is None or r.get("win_rate_ci") is None or r["win_rate_ci"][1] >= ci[0]]
        out.append(text + (f"; its interval overlaps those of {_and(overlap)}, so no lead is established."
                           if overlap else "; its interval lies above every other method's."))
    cells: dict[str, list[dict[str, Any]]] = {}
    for by_method in table.values():
        for m, row in by_method.items():
            cells.setdefault(m, []).append(row)
    for m, rows in cells.items():
        if all(r.get("win_rate") is None for r in rows):
            lo, hi = min(r["kl_range"][0] for r in rows), max(r["kl_range"][1] for r in rows)
            out.append(f"{names.get(m, m)}'s path spans {lo:.2f}–{hi:.2f} nats and reaches none of the budgets "
                       f"({', '.join(table)} nats) in every seed: it has no figure at equal KL.")
    return out


def _and(names: list[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
