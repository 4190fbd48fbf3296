"""A sweep's runs, read back and joined: the numbers behind the sweep report.

A sweep dir holds one sub-directory per job (Hydra multirun), each with ``results.json``,
``scores.json`` (per-prompt gold and preference-model scores of every policy the job judged),
``metrics.jsonl``, ``resolved_config.yaml`` and ``timing.jsonl``. Jobs of the same seed judge
the same test prompts, so a PAT job and a PPO job of seed 0 can be paired prompt by prompt
even though neither judged the other. ``aggregate`` returns the sweep's ``results.json``: the
seed-averaged figures under the same keys as a single run (``win_rate.gold.pat_vs_sft``, ...).
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from alignment.winrate import length_controlled, mean_interval, outcomes, seeds_win_rate
from experiments.config import JUDGES, METHODS
from experiments.evaluation.win_layout import win_entry

FINAL_POINT = ("ppo", "dpo", "grpo", "rloo")  # methods whose job puts its final policy in results["frontier"][m]


def pairs_of(methods: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs a sweep of ``methods`` reports: every method against SFT, then every two methods
    (the one first in ``METHODS`` first): ``[("pat", "sft"), ("ppo", "sft"), ("pat", "ppo")]``."""
    present = [m for m in METHODS if m in methods]
    return [(m, "sft") for m in present] + [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]


PAIRS = pairs_of(("pat", "ppo"))  # what ``+experiment=compare`` judges
COST_KEYS = ("wall_s", "cpu_s", "peak_rss_mb", "gpu_peak_mb", "tokens_generated", "param_updates")
CURVES = {"sft": ["sft/loss"], "pm": ["pm/loss", "pm/accuracy"], "pat": ["pat/loss"],
          "ppo": ["ppo/reward", "ppo/gold", "ppo/kl", "policy/entropy", "critic/explained_variance"]}


@dataclass
class Run:
    path: Path
    stage: str
    seed: int
    results: dict[str, Any]
    scores: dict[str, Any] | None
    metrics: list[dict[str, Any]]
    variant: tuple[str, ...] = ()  # the job's Hydra overrides other than its method and seed


_METHOD_OR_SEED = re.compile(r"^[+~]{0,2}(experiment|seed)=")


def overrides_of(job_dir: Path) -> tuple[str, ...]:
    """The Hydra overrides a job ran with (``.hydra/overrides.yaml``), without its method
    (``+experiment=``) and seed: what a knob sweep varies. Empty for a job without the file."""
    path = job_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return ()
    return tuple(sorted(str(o) for o in OmegaConf.load(path) if not _METHOD_OR_SEED.match(str(o))))


def by_variant(runs: list[Run]) -> dict[str, list[Run]]:
    """The runs grouped by the overrides that differ between them besides method and seed (a
    knob sweep such as ``algo.beta=0.01,0.05``), each group labelled by those overrides; a sweep
    over methods and seeds only is one group labelled ``""``. The report pairs methods and
    averages seeds within a group, never across groups."""
    common = set.intersection(*(set(r.variant) for r in runs)) if runs else set()
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[" ".join(o for o in r.variant if o not in common)].append(r)
    return dict(groups)


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not valid JSON (line {err.lineno}: {err.msg})") from err


def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{i}: not valid JSON ({err.msg})") from err
    return rows


def load_runs(sweep_dir: Path) -> list[Run]:
    """Every finished job under ``sweep_dir`` (a ``results.json`` beside a ``resolved_config.yaml``)."""
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise FileNotFoundError(f"sweep_dir: {sweep_dir} is not a directory")
    runs = []
    for res in sorted(sweep_dir.glob("**/results.json")):
        cfg_path = res.parent / "resolved_config.yaml"
        if res.parent == sweep_dir or not cfg_path.is_file():
            continue
        cfg = OmegaConf.load(cfg_path)
        if "stage" not in cfg or "seed" not in cfg:
            raise ValueError(f"{cfg_path}: no 'stage' or 'seed' key; is this a lab run?")
        scores = res.parent / "scores.json"
        runs.append(Run(res.parent, str(cfg.stage), int(cfg.seed), _json(res),
                        _json(scores) if scores.is_file() else None, _jsonl(res.parent / "metrics.jsonl"),
                        overrides_of(res.parent)))
    return runs


JUDGE_ORDER = JUDGES  # the order judges are reported in
NOT_JUDGES = ("seed", "prompts", "lengths", "pairwise")


def methods_present(runs: list[Run]) -> tuple[str, ...]:
    """The methods of ``METHODS`` a sweep's jobs trained or judged, in ``METHODS``' order."""
    seen = {r.stage for r in runs}
    for r in runs:
        s = r.scores or {}
        seen |= {p for judge, d in s.items() if judge not in NOT_JUDGES and isinstance(d, dict) for p in d}
        seen |= {p for d in s.get("pairwise", {}).values() for pair in d for p in pair.split("_vs_")}
    return tuple(m for m in METHODS if m in seen)


def seed_scores(runs: list[Run]) -> dict[int, dict[str, dict[str, list[float]]]]:
    """``{seed: {judge: {policy: scores}}}`` pooled over the seed's jobs, for every pointwise judge
    (gold, pm, rm), plus the pseudo-judge ``"lengths"`` (reply lengths in tokens). A policy judged by
    several jobs (SFT in all of them) is taken from the job that trained it if there is one, else
    from the first; all jobs of a seed must have judged the same prompts."""
    out: dict[int, dict[str, dict[str, list[float]]]] = {}
    prompts: dict[int, tuple[list[str], Path]] = {}
    for run in sorted((r for r in runs if r.scores), key=lambda r: (r.seed, r.stage not in METHODS, str(r.path))):
        s = run.scores
        if run.seed in prompts and prompts[run.seed][0] != s["prompts"]:
            raise ValueError(f"{run.path / 'scores.json'}: judged other test prompts than "
                             f"{prompts[run.seed][1] / 'scores.json'} (same seed {run.seed}); check eval.n_prompts")
        prompts.setdefault(run.seed, (s["prompts"], run.path))
        pooled = out.setdefault(run.seed, {})
        for judge in [k for k in s if k not in NOT_JUDGES] + (["lengths"] if "lengths" in s else []):
            for policy, values in s[judge].items():
                owner = policy == run.stage
                if policy not in pooled.setdefault(judge, {}) or owner:
                    pooled[judge][policy] = values
    return out


def seed_pairwise(runs: list[Run]) -> dict[int, dict[str, dict[str, list[int]]]]:
    """``{seed: {judge: {"a_vs_b": outcomes}}}`` of the pairwise judges (llm), pooled over the seed's jobs."""
    out: dict[int, dict[str, dict[str, list[int]]]] = {}
    for run in (r for r in runs if r.scores):
        for judge, pairs in run.scores.get("pairwise", {}).items():
            for pair, results in pairs.items():
                out.setdefault(run.seed, {}).setdefault(judge, {}).setdefault(pair, results)
    return out


def _win(per_seed: list[list[int]]) -> dict[str, Any]:
    return win_entry(seeds_win_rate(per_seed), seeds=len(per_seed))


def _mean(values: list[float]) -> dict[str, Any]:
    m, lo, hi = mean_interval(values)
    return {"value": m, "ci": [lo, hi], "per_seed": values}


def win_rates(scores: dict[int, dict[str, dict[str, list[float]]]],
              pairwise: dict[int, dict[str, dict[str, list[int]]]] | None = None,
              pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Seed-averaged win / tie / lose shares and win rates of every pair of ``pairs`` (by default
    ``pairs_of`` the methods judged) both of whose policies were judged, by each judge, with
    two-level bootstrap intervals (seeds, then prompts), and the length-controlled win rate over
    the seeds' prompts pooled (``lc``) where lengths are known."""
    pairwise = pairwise or {}
    if pairs is None:
        judged_policies = {p for d in scores.values() for j, ps in d.items() if j != "lengths" for p in ps}
        judged_policies |= {p for d in pairwise.values() for ps in d.values() for k in ps for p in k.split("_vs_")}
        pairs = pairs_of(tuple(judged_policies))
    present = {j for d in scores.values() for j in d} | {j for d in pairwise.values() for j in d}
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for judge in (j for j in JUDGE_ORDER if j in present):
        for a, b in pairs:
            key = f"{a}_vs_{b}"
            per: dict[int, list[int]] = {}
            for s in sorted(set(scores) | set(pairwise)):
                judged = pairwise.get(s, {}).get(judge, {})
                if key in judged:
                    per[s] = judged[key]
                elif f"{b}_vs_{a}" in judged:  # judged the other way round (a PPO job's ppo_vs_pat)
                    per[s] = [-r for r in judged[f"{b}_vs_{a}"]]
                elif a in scores.get(s, {}).get(judge, {}) and b in scores[s][judge]:
                    per[s] = outcomes(scores[s][judge][a], scores[s][judge][b])
            if not per:
                continue
            seeds, per_seed = list(per), list(per.values())
            w = _win(per_seed)
            w["per_seed"] = {str(s): (sum(r == 1 for r in o) + 0.5 * sum(r == 0 for r in o)) / len(o)
                             for s, o in zip(seeds, per_seed)}
            lens = [scores.get(s, {}).get("lengths", {}) for s in seeds]
            if all(a in ln and b in ln for ln in lens):
                w["lc"] = length_controlled([r for o in per_seed for r in o], [x for ln in lens for x in ln[a]],
                                            [x for ln in lens for x in ln[b]])
            out.setdefault(judge, {})[key] = w
    return out


def overoptimisation(wins: dict[str, dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """Per method: the preference model's win rate against SFT minus the gold judge's, per seed
    (positive: the method pleases the reward model more than it improves true quality)."""
    out = {}
    for m in METHODS:
        key = f"{m}_vs_sft"
        if key in wins.get("gold", {}) and key in wins.get("pm", {}):
            g, p = wins["gold"][key]["per_seed"], wins["pm"][key]["per_seed"]
            out[m] = _mean([p[s] - g[s] for s in sorted(g) if s in p])
    return out


def costs(runs: list[Run]) -> dict[str, dict[str, Any]]:
    """Mean over seeds of what each stage cost when it was made (a reused artifact reports the
    cost recorded beside it): ``{stage: {wall_s, cpu_s, peak_rss_mb, ..., seeds}}``."""
    per: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
    for r in runs:
        for stage, c in r.results.get("cost", {}).items():
            name = f"eval_{r.stage}" if stage == "eval" else stage
            have = per[name].get(r.seed)
            if c and (have is None or (have.get("cached") and not c.get("cached"))):
                per[name][r.seed] = c
    out = {}
    for stage, by_seed in per.items():
        rows = [c for c in by_seed.values() if all(k in c for k in COST_KEYS)]
        if rows:
            out[stage] = {k: sum(c[k] for c in rows) / len(rows) for k in COST_KEYS} | {"seeds": len(rows)}
    return out


def curves(runs: list[Run]) -> dict[str, dict[str, dict[str, list[list[float]]]]]:
    """Learning curves per stage and metric: ``{stage: {metric: {seed: [[step, value], ...]}}}``,
    each from the job that trained the stage."""
    out: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
    for stage, keys in CURVES.items():
        for seed in sorted({r.seed for r in runs}):
            for key in keys:
                for r in runs:
                    if r.seed != seed:
                        continue
                    pts = [[row["step"], row[key]] for row in r.metrics
                           if key in row and "step" in row and row[key] is not None]
                    if pts:
                        out.setdefault(stage, {}).setdefault(key, {})[str(seed)] = pts
                        break
    return out


def _mean_known(values: list[float | None]) -> float | None:
    """The mean of the values that are known (the gold score is unknown on a prompt file's prompts)."""
    known = [v for v in values if v is not None]
    return sum(known) / len(known) if known else None


TRAINING_PATH = ("ppo", "grpo", "rloo")  # methods of the PPO loop, whose training path the frontier draws


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
    GRPO's and RLOO's training paths, and best-of-n's curve (``bon``: KL, gold and PM per n, mean
    over seeds)."""
    pat: dict[Any, list[dict[str, float]]] = defaultdict(list)
    final: dict[str, list[dict[str, Any]]] = {m: [] for m in FINAL_POINT}
    bon: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        f = r.results.get("frontier", {})
        if "pat" in f and r.stage in ("pat", "compare"):
            for p in f["pat"]:
                pat[p["tag"]].append(p)
        for m in FINAL_POINT:
            if m in f and r.stage in (m, "compare"):
                final[m] += [p | {"seed": r.seed} for p in f[m]]
        if r.stage in ("bon", "compare"):
            for p in r.results.get("bon", {}).get("curve", []):
                bon[p["n"]].append(p)
    pat_mean = [{"tag": t, **{k: _mean_known([p[k] for p in ps]) for k in ("kl", "gold", "pm")}, "seeds": len(ps)}
                for t, ps in sorted(pat.items(), key=lambda kv: (kv[0] is None, kv[0] or 0))]
    out: dict[str, Any] = {"pat": pat_mean, "ppo": final.pop("ppo")}
    out |= {m: ps for m, ps in final.items() if ps}
    for m in TRAINING_PATH:
        path = training_path(runs, m)
        if path or m == "ppo":
            out[f"{m}_training"] = path
    if bon:
        out["bon"] = [{"n": n, **{k: _mean_known([p.get(k) for p in ps]) for k in ("kl", "gold", "pm")},
                       "seeds": len(ps)} for n, ps in sorted(bon.items())]
    return out


def aggregate(runs: list[Run]) -> dict[str, Any]:
    """The sweep's ``results.json``."""
    if not runs:
        raise ValueError("no finished runs (results.json beside resolved_config.yaml) in the sweep dir")
    scores = seed_scores(runs)
    methods = methods_present(runs)
    wins = win_rates(scores, seed_pairwise(runs), pairs_of(methods))
    seeds = sorted({r.seed for r in runs})
    out: dict[str, Any] = {
        "seeds": seeds,
        "runs": [{"path": str(r.path), "stage": r.stage, "seed": r.seed,
                  "wall_seconds": r.results.get("wall_seconds")} for r in runs],
        "win_rate": wins,
        "overoptimisation": overoptimisation(wins),
        "gold": {p: _mean([sum(v) / len(v) for s in sorted(scores) for v in [scores[s].get("gold", {}).get(p)] if v])
                 for p in ("sft", *methods) if any(p in d.get("gold", {}) for d in scores.values())},
        "length": {p: _mean([sum(v) / len(v) for s in sorted(scores) for v in [scores[s].get("lengths", {}).get(p)]
                             if v])
                   for p in ("sft", *methods) if any(p in d.get("lengths", {}) for d in scores.values())},
        "cost": costs(runs),
        "frontier": frontier(runs),
        "curves": curves(runs),
        "wall_seconds": sum(r.results.get("wall_seconds") or 0.0 for r in runs),
    }
    pm_acc = {r.seed: r.results["pm"]["val_accuracy"] for r in runs if "val_accuracy" in r.results.get("pm", {})}
    if pm_acc:
        out["pm"] = {"val_accuracy": _mean(list(pm_acc.values()))}
    rho = {r.seed: r.results["controllability"]["spearman"] for r in runs if "controllability" in r.results}
    if rho:  # the runs of one setting share their judges, so their curves share one
        judge = next(r.results["controllability"].get("judge", "gold") for r in runs if "controllability" in r.results)
        out["controllability"] = {"spearman": _mean(list(rho.values())), "judge": judge}
    kl = {r.seed: r.results["kl"]["final"] for r in runs if "kl" in r.results}
    if kl:
        out["kl"] = {"final": _mean(list(kl.values()))}
    tools = tool_use(runs)
    if tools:
        out["tool_use"] = tools
    return out


def tool_use(runs: list[Run]) -> dict[str, Any] | None:
    """The runs' ``tool_use`` blocks (``experiments.evaluation.head_to_head.tool_use_results``) over seeds: each
    policy's share of tool requests answered with a call and its gold there and elsewhere, and each
    pair's gold win rate on tool requests and on the others, as seed means with intervals over seeds
    (with one seed, a win rate keeps its interval over prompts; a policy judged in several jobs of
    one seed counts once per seed). None without tool requests."""
    blocks = [(r.seed, r.results["tool_use"]) for r in runs if r.results.get("tool_use")]
    if not blocks:
        return None

    def over_seeds(part: str, name: str, sub: str | None = None) -> dict[str, Any] | None:
        per_seed: dict[int, Any] = {}
        for seed, b in blocks:
            if b[part].get(name) is not None:
                per_seed.setdefault(seed, b[part][name])
        if not per_seed:
            return None
        if sub and len(per_seed) == 1:  # one seed: its own interval over prompts
            w = next(iter(per_seed.values()))
            return {"value": w["value"], "ci": w["ci"], "per_seed": [w["value"]]}
        return _mean([per_seed[s][sub] if sub else per_seed[s] for s in sorted(per_seed)])

    policies = list(dict.fromkeys(p for _, b in blocks for p in b["share"]))
    pairs = list(dict.fromkeys(k for _, b in blocks for k in b["win_rate"]))
    return {"n": blocks[0][1]["n"],
            **{part: {p: over_seeds(part, p) for p in policies} for part in ("share", "gold", "gold_other")},
            **{part: {k: v for k in pairs if (v := over_seeds(part, k, "value")) is not None}
               for part in ("win_rate", "win_rate_other")}}
