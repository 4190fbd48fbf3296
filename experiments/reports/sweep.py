"""A sweep's runs, read back and joined: the numbers behind the sweep report.

A sweep dir holds one sub-directory per job (Hydra multirun), each with ``results.json``,
``scores.json`` (per-prompt gold and preference-model scores of every policy the job judged),
``metrics.jsonl``, ``resolved_config.yaml`` and ``timing.jsonl``. Jobs of the same seed judge
the same test prompts, so a PAT job and a PPO job of seed 0 can be paired prompt by prompt
even though neither judged the other. ``aggregate`` returns the sweep's ``results.json``: the
seed-averaged figures under the same keys as a single run (``win_rate.gold.pat_vs_sft``, ...).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from scipy import stats

from alignment.statistics.intervals import (
    LEVEL,
    controllability,
    crossed_interval,
    decided_interval,
    gap_interval,
    holm,
    parts_interval,
    rank_intervals,
    t_interval,
    win_rate_interval,
)
from alignment.statistics.winrate import length_controlled, outcomes, point_win_rate
from experiments.config import JUDGES
from experiments.evaluation.equal_kl import job_at_kl, sweep_at_kl
from experiments.reports.frontier import TRAINING_PATH, final_kl, frontier, training_kl
from experiments.reports.runs import Run
from experiments.stages.chain import METHODS


def pairs_of(methods: Sequence[str]) -> list[tuple[str, str]]:
    """The pairs a sweep of ``methods`` reports: every method against SFT, then every two methods
    (the one first in ``METHODS`` first): ``[("pat", "sft"), ("ppo", "sft"), ("pat", "ppo")]``."""
    present = [m for m in METHODS if m in methods]
    return [(m, "sft") for m in present] + [(a, b) for i, a in enumerate(present) for b in present[i + 1:]]


PAIRS = pairs_of(("pat", "ppo"))  # what ``+experiment=compare`` judges
COST_KEYS = ("wall_s", "cpu_s", "peak_rss_mb", "gpu_peak_mb", "tokens_generated", "param_updates")
LOOP_CURVES = ["ppo/reward", "ppo/gold", "ppo/kl", "policy/entropy", "policy/clip_frac"]  # logged by all three
CURVES = {"sft": ["sft/loss"], "pm": ["pm/loss", "pm/accuracy"], "pat": ["pat/loss"], "dpo": ["dpo/loss"],
          "quark": ["quark/loss", "quark/kl"],
          "ppo": [*LOOP_CURVES, "critic/explained_variance"], "grpo": LOOP_CURVES,
          "rloo": LOOP_CURVES}  # {method: metrics}, each read from the jobs that trained that method


JUDGE_ORDER = JUDGES  # the order judges are reported in
PSEUDO_JUDGES = ("lengths", "tool_calls")  # per-prompt records pooled like a judge's scores
NOT_JUDGES = ("seed", "prompts", "pairwise", *PSEUDO_JUDGES)


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
        for judge in [k for k in s if k not in NOT_JUDGES] + [k for k in PSEUDO_JUDGES if k in s]:
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


def prompts_shared(runs: list[Run]) -> bool:
    """Whether every seed was judged on the same test prompts (the world's prompts do not depend on
    the run's seed): the seed-by-prompt tables are then crossed, not nested (``alignment.statistics.intervals``)."""
    return len({tuple(r.scores["prompts"]) for r in runs if r.scores}) <= 1


def _table(per_seed: list[list[float]], shared: bool) -> dict[str, Any]:
    """Mean of per-seed, per-prompt values with its interval over seeds and prompts (crossed when the
    seeds share their prompts; nested, over the seed means, when they do not)."""
    if len({len(v) for v in per_seed}) > 1:  # unequal prompt counts: not crossed
        if len(per_seed) == 1:
            raise ValueError("no values")
        return t_interval([sum(v) / len(v) for v in per_seed]).as_dict()
    if len(per_seed) == 1 and len(per_seed[0]) == 1:
        return t_interval(per_seed[0]).as_dict()
    return crossed_interval(per_seed, shared_prompts=shared).as_dict()


def _win(per_seed: list[list[int]], shared: bool) -> dict[str, Any]:
    """Win rate (ties half) over seeds and prompts with its interval and p-value against 0.5, the
    win / tie / lose shares, and the win rate over decided pairs only (``decided``)."""
    if len({len(o) for o in per_seed}) > 1:  # seeds judged on different numbers of prompts: nested
        w, d = t_interval([point_win_rate(o) for o in per_seed], null=0.5, bounds=(0.0, 1.0)), None
    elif len(per_seed) == 1 and len(per_seed[0]) == 1:
        w, d = t_interval([point_win_rate(per_seed[0])], null=0.5), None
    else:
        w = win_rate_interval(per_seed, shared_prompts=shared)
        d = decided_interval(per_seed, shared_prompts=shared)
    k = len(per_seed)

    def share(v: int) -> float:
        return sum(sum(r == v for r in s) / len(s) for s in per_seed) / k

    return {**w.as_dict(), "win": share(1), "tie": share(0), "lose": share(-1), "n": sum(len(s) for s in per_seed),
            "seeds": k, "decided": d.as_dict() if d else None}


def _seed_level(values: list[float], bounds: tuple[float, float] | None = None) -> dict[str, Any]:
    """A figure measured once per seed (its per-prompt values not kept): mean and t-interval over
    the seeds (none with one seed), and the values."""
    return t_interval(values, bounds=bounds).as_dict() | {"per_seed": values}


def pair_outcomes(scores: dict[int, dict[str, dict[str, list[float]]]],
                  pairwise: dict[int, dict[str, dict[str, list[int]]]] | None = None,
                  pairs: Sequence[tuple[str, str]] | None = None) -> dict[str, dict[str, dict[int, list[int]]]]:
    """``{judge: {"a_vs_b": {seed: outcomes}}}`` for every pair of ``pairs`` (by default ``pairs_of``
    the methods judged) both of whose policies were judged, by each judge; a pairwise judge's
    outcomes as judged (turned round where it judged ``b_vs_a``), a pointwise judge's from the
    scores of the same prompts."""
    pairwise = pairwise or {}
    if pairs is None:
        judged_policies = {p for d in scores.values() for j, ps in d.items() if j not in PSEUDO_JUDGES for p in ps}
        judged_policies |= {p for d in pairwise.values() for ps in d.values() for k in ps for p in k.split("_vs_")}
        pairs = pairs_of(tuple(judged_policies))
    present = {j for d in scores.values() for j in d} | {j for d in pairwise.values() for j in d}
    out: dict[str, dict[str, dict[int, list[int]]]] = {}
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
            if per:
                out.setdefault(judge, {})[key] = per
    return out


def _claim(w: dict[str, Any]) -> str:
    """'beats' or 'loses to' where the Holm-corrected p-value supports it; where only the pair's own
    95% interval clears 0.5, 'has an edge (unconfirmed after Holm) over' or 'trails (unconfirmed
    after Holm)'; else 'is level with'."""
    if w.get("p_holm") is not None and w["p_holm"] < 1 - LEVEL:
        return "beats" if w["value"] > 0.5 else "loses to"
    ci = w.get("ci") or [None, None]
    if ci[0] is not None and ci[0] > 0.5:
        return "has an edge (unconfirmed after Holm) over"
    if ci[1] is not None and ci[1] < 0.5:
        return "trails (unconfirmed after Holm)"
    return "is level with"


def win_rates(scores: dict[int, dict[str, dict[str, list[float]]]],
              pairwise: dict[int, dict[str, dict[str, list[int]]]] | None = None,
              pairs: Sequence[tuple[str, str]] | None = None, shared: bool = True,
              outs: dict[str, dict[str, dict[int, list[int]]]] | None = None) -> dict[str, dict[str, dict[str, Any]]]:
    """Win / tie / lose shares and win rates of every pair (``pair_outcomes``) by each judge, over
    seeds and prompts, with 95% intervals (``alignment.statistics.intervals``: crossed seeds and prompts when
    the seeds share their prompts), the win rate over decided pairs (``decided``), the p-value
    against 0.5 and its Holm correction over the judge's pairs (``p_holm``), the claim it supports
    (``claim``: beats / is level with / loses to), and the length-controlled win rate (``lc``,
    resampling each prompt with all its seeds) where lengths are known."""
    outs = outs if outs is not None else pair_outcomes(scores, pairwise, pairs)
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for judge, by_pair in outs.items():
        for key, per in by_pair.items():
            a, b = key.split("_vs_")
            seeds, per_seed = list(per), list(per.values())
            w = _win(per_seed, shared)
            w["per_seed"] = {str(s): point_win_rate(o) for s, o in zip(seeds, per_seed)}
            lens = [scores.get(s, {}).get("lengths", {}) for s in seeds]
            if all(a in ln and b in ln for ln in lens):
                n = len(per_seed[0])
                clusters = [i for _ in per_seed for i in range(n)] if shared and all(
                    len(o) == n for o in per_seed) else None
                w["lc"] = _length_controlled(per_seed, [ln[a] for ln in lens], [ln[b] for ln in lens], clusters)
            out.setdefault(judge, {})[key] = w
        family = [w for w in out.get(judge, {}).values() if w.get("p") is not None]
        for w, p in zip(family, holm([w["p"] for w in family])):
            w["p_holm"] = p
        for w in out.get(judge, {}).values():
            w.setdefault("p_holm", None)
            w["claim"] = _claim(w)
    return out


def _length_controlled(per_seed: list[list[int]], len_a: list[list[float]], len_b: list[list[float]],
                       clusters: list[int] | None) -> dict[str, Any]:
    """The length-controlled win rate with the seeds pooled. Its prompt part is the percentile
    bootstrap's (each prompt resampled with all its seeds, ``clusters``), read as a standard error;
    with several seeds the spread of the seeds' own length-controlled win rates is added as a t-term
    (``alignment.statistics.intervals.parts_interval``), as for every other figure over seeds."""
    lc = length_controlled([r for o in per_seed for r in o], [x for ln in len_a for x in ln],
                           [x for ln in len_b for x in ln], clusters=clusters)
    k = len(per_seed)
    if k == 1:
        return lc
    own = [length_controlled(o, la, lb, n_boot=1)["value"] for o, la, lb in zip(per_seed, len_a, len_b)]
    z = float(stats.norm.ppf(0.5 + LEVEL / 2))
    parts = {"seed": float(np.var(own, ddof=1)) / k, "df_seed": k - 1.0,
             "prompt": ((lc["ci"][1] - lc["ci"][0]) / (2 * z)) ** 2, "df_prompt": float(lc["n"] - 1)}
    w = parts_interval(lc["value"], parts, LEVEL, None, (0.0, 1.0))
    return lc | {"ci": [w.low, w.high], "per_seed": own}


def ranking(outs: dict[str, dict[str, dict[int, list[int]]]], methods: Sequence[str],
            shared: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Per judge, the methods ranked by win rate against SFT, each with a simultaneous 95% rank
    interval: two methods are told apart where the difference of their win rates against SFT (paired
    per seed and prompt) has a Holm-corrected p-value below 5% over the family of all such pairs."""
    out = {}
    for judge, by_pair in outs.items():
        vs = {m: by_pair[f"{m}_vs_sft"] for m in methods if f"{m}_vs_sft" in by_pair}
        if not vs:
            continue
        names = [m for m in vs if all(len(vs[m].get(s, [])) == len(o) for s, o in vs[next(iter(vs))].items())]
        tests = []
        for i, a in enumerate(names):
            for b in names[i + 1:]:
                seeds = sorted(set(vs[a]) & set(vs[b]))
                if not seeds or len({len(vs[a][s]) for s in seeds} | {len(vs[b][s]) for s in seeds}) > 1:
                    continue
                diff = [[(x - y) / 2 for x, y in zip(vs[a][s], vs[b][s])] for s in seeds]
                if len(seeds) == 1 and len(diff[0]) == 1:
                    continue
                tests.append((a, b, crossed_interval(diff, null=0.0, shared_prompts=shared)))
        adjusted = holm([t.p for _, _, t in tests])
        better = {}
        for (a, b, t), p in zip(tests, adjusted):
            if p < 1 - LEVEL:
                better[(a, b) if t.value > 0 else (b, a)] = True
        ranks = rank_intervals(names, better)
        rows = [{"method": m, "value": sum(point_win_rate(o) for o in vs[m].values()) / len(vs[m]),
                 "rank": list(ranks[m])} for m in names]
        out[judge] = sorted(rows, key=lambda r: -r["value"])  # stable: ties keep METHODS' order
    return out


def overoptimisation(outs: dict[str, dict[str, dict[int, list[int]]]],
                     shared: bool = True) -> dict[str, dict[str, Any]]:
    """Per method: the preference model's win rate against SFT minus the gold judge's (positive: the
    method pleases the reward model more than it improves true quality), paired per seed and prompt
    with its 95% interval over seeds and prompts; with ties counted half (``value``, ``ci``) and over
    each judge's decided pairs only (``decided``), since the gold judge ties far more often than the
    preference model and ties pull a win rate towards 0.5."""
    out = {}
    for m in METHODS:
        key = f"{m}_vs_sft"
        if key not in outs.get("gold", {}) or key not in outs.get("pm", {}):
            continue
        g, p = outs["gold"][key], outs["pm"][key]
        seeds = [s for s in sorted(g) if s in p and len(p[s]) == len(g[s])]
        if not seeds or len({len(g[s]) for s in seeds}) > 1 or (len(seeds) == 1 and len(g[seeds[0]]) < 2):
            continue
        ties = gap_interval([p[s] for s in seeds], [g[s] for s in seeds], shared_prompts=shared)
        decided = gap_interval([p[s] for s in seeds], [g[s] for s in seeds], decided=True, shared_prompts=shared)
        out[m] = ties.as_dict() | {"per_seed": [point_win_rate(p[s]) - point_win_rate(g[s]) for s in seeds],
                                   "tie_gold": sum(x == 0 for s in seeds for x in g[s]) / sum(len(g[s]) for s in seeds),
                                   "tie_pm": sum(x == 0 for s in seeds for x in p[s]) / sum(len(p[s]) for s in seeds),
                                   "decided": decided.as_dict() if decided else None}
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
    """Learning curves per method and metric: ``{method: {metric: {seed: [[step, value], ...]}}}``,
    each from the job that trained that method (GRPO and RLOO log the PPO loop's ``ppo/*`` keys
    too, so a curve is never read from another method's job). The shared stages (SFT, the
    preference model) come from the first job of the seed that logged them; a ``compare`` job's
    PPO-loop keys belong to the one PPO-loop method it trained."""
    out: dict[str, dict[str, dict[str, list[list[float]]]]] = {}
    for method, keys in CURVES.items():
        for seed in sorted({r.seed for r in runs}):
            own = [r for r in runs if r.seed == seed and _trained_by(r, method)]
            for key in keys:
                for r in own:
                    pts = [[row["step"], row[key]] for row in r.metrics
                           if key in row and "step" in row and row[key] is not None]
                    if pts:
                        out.setdefault(method, {}).setdefault(key, {})[str(seed)] = pts
                        break
    return out


SHARED_STAGES = ("sft", "pm")


def _trained_by(r: Run, method: str) -> bool:
    """Whether job ``r`` trained ``method`` (and so logged its curves): its own stage; a shared
    stage in any job; a ``compare`` job's methods, where it trained at most one PPO-loop method
    (their metrics share the ``ppo/*`` keys)."""
    if method in SHARED_STAGES or r.stage == method:
        return True
    if r.stage != "compare":
        return False
    trained = r.results.get("methods", ["pat", "ppo"])
    loop = [m for m in trained if m in TRAINING_PATH]
    return method in trained and (method not in TRAINING_PATH or loop == [method])


def controllability_over_seeds(runs: list[Run], shared: bool) -> dict[str, Any] | None:
    """PAT's controllability over seeds (``alignment.statistics.intervals.controllability``): from the per-prompt
    scores per tag that each PAT job keeps (``results.controllability.per_prompt``), else (older
    jobs) the per-seed Spearman values alone. None without a PAT job."""
    blocks: dict[int, dict[str, Any]] = {}
    for r in runs:
        if "controllability" in r.results:
            blocks.setdefault(r.seed, r.results["controllability"])
    if not blocks:
        return None
    first = next(iter(blocks.values()))
    judge, tags = first.get("judge", "gold"), first.get("tags")
    if tags and all("per_prompt" in b for b in blocks.values()):
        tables = [np.array([blocks[s]["per_prompt"][str(t)] for t in tags]) for s in sorted(blocks)]
        if len({t.shape for t in tables}) == 1:
            return {"judge": judge, "tags": tags, "seeds": sorted(blocks),
                    **controllability(tags, tables, shared_prompts=shared)}
    rho = [blocks[s]["spearman"] for s in sorted(blocks)]
    rho = [x["value"] if isinstance(x, dict) else x for x in rho]
    return {"judge": judge, "tags": tags, "seeds": sorted(blocks),
            "spearman": {"value": sum(rho) / len(rho), "ci": None, "per_seed": rho}}


def aggregate(runs: list[Run]) -> dict[str, Any]:
    """The sweep's ``results.json``."""
    if not runs:
        raise ValueError("no finished runs (results.json beside resolved_config.yaml) in the sweep dir")
    scores = seed_scores(runs)
    methods = methods_present(runs)
    shared = prompts_shared(runs)
    pairs = pairs_of(methods)
    if any(isinstance(ps, dict) and "base" in ps for d in scores.values() for j, ps in d.items()
           if j not in NOT_JUDGES):
        pairs += [(m, "base") for m in ("sft", *methods)]  # a pretrained model's jobs: did training help at all?
    outs = pair_outcomes(scores, seed_pairwise(runs), pairs)
    wins = win_rates(scores, shared=shared, outs=outs)
    seeds = sorted({r.seed for r in runs})

    def per_policy(kind: str) -> dict[str, Any]:
        out = {}
        for p in ("sft", *methods):
            rows = [scores[s][kind][p] for s in sorted(scores) if p in scores[s].get(kind, {})]
            if rows:
                out[p] = _table(rows, shared) | {"per_seed": [sum(v) / len(v) for v in rows]}
        return out

    out: dict[str, Any] = {
        "seeds": seeds,
        "prompts_shared": shared,
        "runs": [{"path": str(r.path), "stage": r.stage, "seed": r.seed,
                  "wall_seconds": r.results.get("wall_seconds")} for r in runs],
        "win_rate": wins,
        "ranking": ranking(outs, methods, shared),
        "overoptimisation": overoptimisation(outs, shared),
        "gold": per_policy("gold"),
        "length": per_policy("lengths"),
        "cost": costs(runs),
        "frontier": frontier(runs),
        "curves": curves(runs),
        "wall_seconds": sum(r.results.get("wall_seconds") or 0.0 for r in runs),
    }
    pm_acc = {r.seed: r.results["pm"]["val_accuracy"] for r in runs if "val_accuracy" in r.results.get("pm", {})}
    if pm_acc:  # per-pair correctness is not kept: an interval over seeds
        out["pm"] = {"val_accuracy": _seed_level([pm_acc[s] for s in sorted(pm_acc)], (0.0, 1.0))}
    control = controllability_over_seeds(runs, shared)
    if control:
        out["controllability"] = control
    kl, trained = final_kl(runs), training_kl(runs)
    if kl or trained:  # per method, each from its own jobs
        out["kl"] = {"final": {m: _seed_level(list(v.values())) | {"seeds": list(v)} for m, v in kl.items()},
                     "bound": sorted({m for r in runs for m in r.results.get("kl", {}).get("bound", [])}),
                     "training_final": {m: _seed_level(list(v.values())) | {"seeds": list(v)}
                                        for m, v in trained.items()}}
    tools = tool_use(runs, scores, shared)
    if tools:
        out["tool_use"] = tools
    at_kl = sweep_at_kl([job_at_kl(r.results["frontier"]) for r in runs if r.results.get("frontier")])
    if at_kl:
        out["at_kl"] = at_kl
    return out


def _over_seeds_prompts(per_seed: dict[int, list[float]], shared: bool) -> dict[str, Any] | None:
    rows = [v for _, v in sorted(per_seed.items()) if v]
    if not rows:
        return None
    return _table(rows, shared) | {"per_seed": [sum(v) / len(v) for v in rows]}


def tool_use(runs: list[Run], scores: dict[int, dict[str, dict[str, list[Any]]]] | None = None,
             shared: bool = True) -> dict[str, Any] | None:
    """The runs' ``tool_use`` blocks (``experiments.evaluation.head_to_head.tool_use_results``) over seeds: each
    policy's share of tool requests answered with a call and its gold there and elsewhere, and each
    pair's gold win rate on tool requests and on the others, as means over seeds and prompts with
    95% intervals that carry both the seed spread and the prompt noise (from the per-prompt tool
    calls in ``scores.json``). Older jobs without per-prompt tool calls: a win rate's interval adds
    the seeds' own intervals over prompts to the spread over seeds (conservative); a share or mean
    gold gets the t-interval over seeds. None without tool requests."""
    blocks = [(r.seed, r.results["tool_use"]) for r in runs if r.results.get("tool_use")]
    if not blocks:
        return None
    policies = list(dict.fromkeys(p for _, b in blocks for p in b["share"]))
    pairs = list(dict.fromkeys(k for _, b in blocks for k in b["win_rate"]))
    scores = scores or {}
    seeds = sorted({s for s, _ in blocks})
    have = all("tool_calls" in scores.get(s, {}) and "gold" in scores[s]
               and all(p in scores[s]["tool_calls"] and p in scores[s]["gold"] for p in policies) for s in seeds)
    out: dict[str, Any] = {"n": blocks[0][1]["n"], "per_prompt": have}
    if have:
        def part(s: int, p: str, tool: bool) -> list[float]:
            return [g for g, c in zip(scores[s]["gold"][p], scores[s]["tool_calls"][p]) if (c is not None) == tool]

        out["share"] = {p: _over_seeds_prompts({s: [float(c) for c in scores[s]["tool_calls"][p] if c is not None]
                                                for s in seeds}, shared) for p in policies}
        out["gold"] = {p: _over_seeds_prompts({s: part(s, p, True) for s in seeds}, shared) for p in policies}
        out["gold_other"] = {p: _over_seeds_prompts({s: part(s, p, False) for s in seeds}, shared) for p in policies}
        for name, tool in (("win_rate", True), ("win_rate_other", False)):
            out[name] = {}
            for k in pairs:
                a, b = k.split("_vs_")
                per = [outcomes(part(s, a, tool), part(s, b, tool)) for s in seeds]
                if all(per):
                    out[name][k] = _win(per, shared) | {"per_seed": [point_win_rate(o) for o in per]}
        return out

    def seed_values(part_name: str, name: str) -> dict[int, Any]:
        per: dict[int, Any] = {}
        for seed, b in blocks:
            if b[part_name].get(name) is not None:
                per.setdefault(seed, b[part_name][name])
        return per

    for part_name in ("share", "gold", "gold_other"):
        out[part_name] = {}
        for p in policies:
            per = seed_values(part_name, p)
            out[part_name][p] = _seed_level([per[s] for s in sorted(per)]) if per else None
    for part_name in ("win_rate", "win_rate_other"):
        out[part_name] = {}
        for k in pairs:
            per = seed_values(part_name, k)
            if not per:
                continue
            values = np.array([per[s]["value"] for s in sorted(per)])
            se = np.array([(per[s]["ci"][1] - per[s]["ci"][0]) / (2 * 1.96) for s in sorted(per)])
            n = max(int(per[s].get("n", 2)) for s in per)
            parts = {"seed": values.var(ddof=1) / len(values) if len(values) > 1 else 0.0,
                     "df_seed": max(len(values) - 1.0, 1.0), "prompt": float(np.mean(se ** 2)),
                     "df_prompt": max(n - 1.0, 1.0)}
            out[part_name][k] = parts_interval(float(values.mean()), parts, LEVEL, 0.5, (0.0, 1.0)).as_dict() | {
                "per_seed": list(values)}
    return out
