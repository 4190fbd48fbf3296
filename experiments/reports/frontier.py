"""The sweep's reward-KL plane: every method's final KL measured alike, the training paths, the
frontier's points over seeds and the Gao et al. (2022) fits of its paths."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from alignment.statistics.scaling import fit
from experiments.evaluation.equal_kl import SNAPSHOT_PATHS, STARTS_AT_SFT, final_kls
from experiments.reports.runs import Run

# methods whose job puts its final policy in results["frontier"][m]
FINAL_POINT = ("ppo", "dpo", "grpo", "rloo", "quark")
TRAINING_PATH = ("ppo", "grpo", "rloo")  # methods of the PPO loop, whose training rollouts' path the frontier draws
SAVED_PATH = tuple(SNAPSHOT_PATHS)  # methods whose saved policies (by iteration, by round) the frontier draws


def final_kl(runs: list[Run]) -> dict[str, dict[int, float]]:
    """``{method: {seed: KL}}``: every method's final KL to the SFT model measured alike (the same
    control prompts, temperature-1 samples and k1 estimator; ``experiments.evaluation.equal_kl``),
    from its own job (a compare job's for all its methods), never mixing methods. Best-of-n's is its
    analytic bound (``kl.bound``)."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in runs:
        f = r.results.get("frontier", {})
        for m, v in final_kls(f, r.results.get("pat", {}).get("inference_tag", 100)).items():
            if r.stage in (m, "compare"):
                out[m][r.seed] = v
    return {m: dict(sorted(v.items())) for m, v in sorted(out.items())}


def training_kl(runs: list[Run]) -> dict[str, dict[int, float]]:
    """``{method: {seed: KL}}``: each PPO-loop method's own estimate at its last iteration (on its
    training rollouts), from the job that trained it."""
    out: dict[str, dict[int, float]] = defaultdict(dict)
    for r in runs:
        for m in TRAINING_PATH:
            final = r.results.get(m, {}).get("final", {})
            if r.stage in (m, "compare") and "ppo/kl" in final:
                out[m][r.seed] = final["ppo/kl"]
    return {m: dict(sorted(out[m].items())) for m in TRAINING_PATH if out.get(m)}


def _mean_known(values: list[float | None]) -> float | None:
    """The mean of the values that are known (the gold score is unknown on a prompt file's prompts)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


def training_path(runs: list[Run], method: str) -> list[dict[str, float]]:
    """A PPO-loop method's path on the reward-KL plane: KL, reward (``pm``) and gold per iteration,
    mean over seeds. Each run's path comes from ``results["frontier"]["<method>_training"]``, or
    from the ``ppo/*`` rows of ``metrics.jsonl`` of the method's own job (older runs)."""
    by_step: dict[int, list[dict[str, float]]] = defaultdict(list)
    for r in runs:
        path = r.results.get("frontier", {}).get(f"{method}_training")
        if path is None and (r.stage == method or (r.stage == "compare" and method == "ppo")):  # older runs
            path = [{"step": row["step"], "kl": row["ppo/kl"], "gold": row["ppo/gold"],
                     "pm": row.get("ppo/reward", float("nan"))}
                    for row in r.metrics if "ppo/kl" in row and "ppo/gold" in row and "step" in row]
        for p in path or []:
            by_step[p["step"]].append(p)
    return [{"step": s, "kl": sum(p["kl"] for p in ps) / len(ps), "gold": _mean_known([p.get("gold") for p in ps]),
             "pm": sum(p["pm"] for p in ps) / len(ps)} for s, ps in sorted(by_step.items())]


def frontier(runs: list[Run]) -> dict[str, Any]:
    """Reward against KL to SFT: PAT's points per tag (mean over seeds), PPO's final policy per
    seed, and PPO's training path (``ppo_training``: KL, gold and PM per iteration, mean over seeds);
    where the sweep ran them, DPO's, GRPO's and RLOO's final policy per seed (under their names),
    GRPO's and RLOO's training paths, Quark's final policy per seed and its path by round
    (``quark_path``: SFT, each round's policy and the last, mean over seeds), and best-of-n's curve
    (``bon``: KL, gold and PM per n, mean over seeds)."""
    pat: dict[Any, list[dict[str, float]]] = defaultdict(list)
    final: dict[str, list[dict[str, Any]]] = {m: [] for m in FINAL_POINT}
    bon: dict[int, list[dict[str, Any]]] = defaultdict(list)
    measured: dict[str, dict[int, list[dict[str, Any]]]] = {m: defaultdict(list) for m in SAVED_PATH}
    for r in runs:
        f = r.results.get("frontier", {})
        if "pat" in f and r.stage in ("pat", "compare"):
            for p in f["pat"]:
                pat[p["tag"]].append(p)
        for m in FINAL_POINT:
            if m in f and r.stage in (m, "compare"):
                final[m] += [p | {"seed": r.seed} for p in f[m]]
        if r.stage in ("bon", "compare"):  # measured like the rest where the job has it; else the evaluation's curve
            for p in f.get("bon_path") or r.results.get("bon", {}).get("curve", []):
                bon[p["n"]].append(p)
        for m in SAVED_PATH:
            if r.stage in (m, "compare") and f.get(m) and f.get("sft") and f"{m}_path" in f:
                # a final point without its own step (PPO's) is at the job's last iteration
                last = r.results.get(m, {}).get("iterations", -1)
                ends = [*([f["sft"]] if m in STARTS_AT_SFT else []), *f[f"{m}_path"],
                        *({"step": last} | p for p in f[m])]
                for p in ends:
                    measured[m][p["step"]].append(p)
    pat_mean = [{"tag": t, **{k: _mean_known([p[k] for p in ps]) for k in ("kl", "gold", "pm")}, "seeds": len(ps)}
                for t, ps in sorted(pat.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    out: dict[str, Any] = {"pat": pat_mean, "ppo": final.pop("ppo")}
    out |= {m: ps for m, ps in final.items() if ps}
    for m in TRAINING_PATH:
        path = training_path(runs, m)
        if path or m == "ppo":
            out[f"{m}_training"] = path
    for m, by_step in measured.items():
        if by_step:  # the policies saved along training, measured like every final point (mean over seeds)
            out[f"{m}_path"] = [{"step": s, **{k: _mean_known([p.get(k) for p in ps]) for k in ("kl", "gold", "pm")},
                                 "seeds": len(ps)} for s, ps in sorted(by_step.items())]
    if bon:
        out["bon"] = [{"n": n, **{k: _mean_known([p.get(k) for p in ps]) for k in ("kl", "gold", "pm")},
                       "seeds": len(ps), "measured": all(p.get("kl_bound") for p in ps)}
                      for n, ps in sorted(bon.items())]
    out["fits"] = frontier_fits(out)
    return out


def frontier_fits(f: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """The Gao et al. (2022) over-optimisation fits (``alignment.statistics.scaling``) of every path on the
    frontier, for the gold score and the preference model's: the PPO loop's training paths by
    iteration (``<method>_training``, the RL form) and best-of-n by n (``bon``); a path too short
    to fit says so (``fitted: False`` and a ``reason``)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for m in dict.fromkeys((*SAVED_PATH, *TRAINING_PATH)):
        for name in (f"{m}_path", f"{m}_training"):
            path = f.get(name) or []
            if path:
                out[name] = {k: fit([max(p["kl"], 0.0) for p in path], [p.get(k) for p in path], "rl")
                             for k in ("gold", "pm")}
    if f.get("bon"):
        out["bon"] = {k: fit([p["kl"] for p in f["bon"]], [p.get(k) for p in f["bon"]], "bon") for k in ("gold", "pm")}
    return out
