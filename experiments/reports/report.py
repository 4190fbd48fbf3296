"""Run reports: ``report.md`` and PNG plots in the run dir (matplotlib, no display)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from alignment.atomic import write_text  # noqa: E402

JUDGE_NAMES = {"gold": "gold judge", "pm": "preference model", "rm": "reward model", "llm": "LLM judge"}
METHOD_NAMES = {"sft": "SFT", "pat": "PAT", "ppo": "PPO", "grpo": "GRPO", "rloo": "RLOO", "dpo": "DPO", "bon": "BoN",
                "quark": "Quark"}


def win_rows(r: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    """(pair, judge, win rate) for every pair and judge of a run's ``win_rate``, pair by pair."""
    wr = r["win_rate"]
    pairs = list(dict.fromkeys(pair for d in wr.values() for pair in d))
    return [(pair, judge, wr[judge][pair]) for pair in pairs for judge in wr if pair in wr[judge]]


def pair_name(pair: str) -> str:
    a, b = pair.split("_vs_")
    return f"{METHOD_NAMES.get(a, a)} vs {METHOD_NAMES.get(b, b)}"


def print_win_rates(r: dict[str, Any]) -> None:
    """The run's win rates per pair and judge, with the length-controlled win rate beside each
    (``lc``) and each policy's mean reply length."""
    print(f"  {'pair':<12}{'judge':<18}{'win':>6}{'tie':>6}{'lose':>6}{'win rate':>10}   {'95% CI':<16}"
          f"{'LC win rate':>12}")
    for pair, judge, w in win_rows(r):
        lc = f"{w['lc']['value']:>12.3f}" if "lc" in w else ""
        print(f"  {pair_name(pair):<12}{JUDGE_NAMES[judge]:<18}{w['win']:>6.2f}{w['tie']:>6.2f}{w['lose']:>6.2f}"
              f"{w['value']:>10.3f}   [{w['ci'][0]:.3f}, {w['ci'][1]:.3f}]{lc}")
    if r.get("length"):
        print("  mean reply length (tokens): "
              + ", ".join(f"{METHOD_NAMES.get(k, k)} {v:.1f}" for k, v in r["length"].items()))


def judge_share_lines(r: dict[str, Any]) -> list[str]:
    """Markdown rows of each judge's tie, unparsed and error shares (``results.json``'s ``judge_shares``)."""
    shares = r.get("judge_shares")
    if not shares:
        return []
    lines = ["", "| judge | tie share | unparsed share | error share |", "| --- | --- | --- | --- |"]
    for judge, s in shares.items():
        lines.append(f"| {JUDGE_NAMES.get(judge, judge)} | {s['tie_share']:.3f} | {s['unparsed_share']:.3f} "
                     f"| {s['error_share']:.3f} |")
    return lines + ["", "A tie share counts equal scores (for the LLM judge: answers that disagree between the two "
                    "orders); unparsed answers and failed requests are ties too, counted apart."]


def win_table(r: dict[str, Any]) -> list[str]:
    """Markdown rows of ``print_win_rates``."""
    lines = ["| pair | judge | win | tie | lose | win rate | 95% CI | length-controlled win rate |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for pair, judge, w in win_rows(r):
        lc = f"{w['lc']['value']:.3f} [{w['lc']['ci'][0]:.3f}, {w['lc']['ci'][1]:.3f}]" if "lc" in w else ""
        lines.append(f"| {pair_name(pair)} | {JUDGE_NAMES[judge]} | {w['win']:.2f} | {w['tie']:.2f} | {w['lose']:.2f} "
                     f"| **{w['value']:.3f}** | [{w['ci'][0]:.3f}, {w['ci'][1]:.3f}] | {lc} |")
    lines += judge_share_lines(r)
    if r.get("length"):
        lines += ["", "Mean reply length in tokens: "
                  + ", ".join(f"{METHOD_NAMES.get(k, k)} {v:.1f}" for k, v in r["length"].items())
                  + ". Judges tend to prefer longer replies; the length-controlled win rate is the win rate a "
                  "logistic regression of the outcome on the length difference predicts at equal length."]
    return lines


def tool_use_table(r: dict[str, Any]) -> list[str]:
    """The tool-use section (``results.tool_use``): per policy the share of tool-use requests answered
    with a call of the right tool and the mean gold score there and elsewhere; the gold win rates of
    each pair on the two parts. Empty when no prompt asked for a tool."""
    t = r.get("tool_use")
    if not t:
        return []
    lines = ["## Tool use", "", f"{t['n']} of the held-out requests ask for a tool (calculator, solver, search).", "",
             "| policy | calls the tool | gold on tool requests | gold on the others |", "| --- | --- | --- | --- |"]
    for p in t["share"]:
        other = t["gold_other"][p]
        lines.append(f"| {p} | {t['share'][p]:.3f} | {t['gold'][p]:.3f} | "
                     + (f"{other:.3f}" if other is not None else "-") + " |")
    lines += ["", "| pair | gold win rate on tool requests | 95% CI | on the others | 95% CI |",
              "| --- | --- | --- | --- | --- |"]
    for pair, w in t["win_rate"].items():
        o = t["win_rate_other"].get(pair)
        rest = f"{o['value']:.3f} | [{o['ci'][0]:.3f}, {o['ci'][1]:.3f}]" if o else "- | -"
        lines.append(f"| {pair_name(pair)} | {w['value']:.3f} | [{w['ci'][0]:.3f}, {w['ci'][1]:.3f}] | {rest} |")
    return [*lines, ""]


def save_png(fig, path: Path) -> Path:
    """Write ``fig`` to ``path`` atomically and close it."""
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def draw_win_tie_lose(ax, rows: list[tuple[str, dict[str, Any]]], title: str) -> None:
    """Stacked horizontal bars of win / tie / lose shares on ``ax``, one row per (label, result),
    each annotated with its win rate and interval."""
    for i, (_, w) in enumerate(rows):
        left = 0.0
        for share, color, name in ((w["win"], "#2a9d8f", "win"), (w["tie"], "#c9c9c9", "tie"),
                                   (w["lose"], "#e76f51", "lose")):
            ax.barh(i, share, left=left, color=color, label=name if i == 0 else None)
            if share > 0.06:
                ax.text(left + share / 2, i, f"{share:.0%}", ha="center", va="center", fontsize=9)
            left += share
        ax.text(1.02, i, f"win rate {w['value']:.2f} [{w['ci'][0]:.2f}, {w['ci'][1]:.2f}]", va="center", fontsize=9)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows])
    ax.set_xlim(0, 1)
    ax.invert_yaxis()  # first row on top
    ax.axvline(0.5, color="black", lw=0.8, ls=":")
    ax.set_title(title)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, -0.2 - 0.05 * len(rows)), ncol=3, frameon=False)


def win_tie_lose_plot(rows: list[tuple[str, dict[str, Any]]], path: Path, title: str) -> Path:
    """``draw_win_tie_lose`` as its own PNG."""
    fig, ax = plt.subplots(figsize=(7, 0.7 * len(rows) + 1.2))
    draw_win_tie_lose(ax, rows, title)
    return save_png(fig, path)


def controllability_plot(tags: list[int], gold: list[float], path: Path, rho: float,
                         judge: str = "gold judge") -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(tags, gold, marker="o", color="#264653")
    ax.set_xlabel("quality tag at inference")
    ax.set_ylabel(f"mean {judge} score")
    ax.set_title(f"PAT controllability (Spearman {rho:.2f})")
    ax.set_xticks(tags)
    ax.grid(alpha=0.3)
    return save_png(fig, path)


def write_pat_report(run_dir: Path, r: dict[str, Any]) -> dict[str, Path]:
    """``report.md`` plus ``win_rates.png`` and ``controllability.png``; returns the images."""
    rows = [(JUDGE_NAMES[judge], w) for _, judge, w in win_rows(r)]
    c = r["controllability"]
    curve = c.get("gold", c.get("score"))
    images = {
        "win_rates": win_tie_lose_plot(rows, run_dir / "win_rates.png", "PAT vs SFT"),
        "controllability": controllability_plot(c["tags"], curve, run_dir / "controllability.png", c["spearman"],
                                                JUDGE_NAMES[c.get("judge", "gold")]),
    }
    lines = ["# PAT vs SFT", "", "![win rates](win_rates.png)", "", *win_table(r), ""]
    if "gold" in r:
        lines.append(f"Mean gold score: SFT {r['gold']['sft']:.3f}, PAT with `<quality: 100>` {r['gold']['pat']:.3f}.")
    lines += [f"Preference model: validation accuracy {r['pm']['val_accuracy']:.3f}"
              + (f", agreement with the gold judge {r['pm']['gold_agreement']:.3f}." if r["pm"].get("gold_agreement")
                 is not None else "."),
              "", "## Controllability", "", "![controllability](controllability.png)", "",
              "| tag | " + " | ".join(str(t) for t in c["tags"]) + " |",
              "| --- |" + " --- |" * len(c["tags"]),
              f"| mean {JUDGE_NAMES[c.get('judge', 'gold')]} score | " + " | ".join(f"{v:.3f}" for v in curve) + " |",
              "", f"Spearman correlation of tag and score: {c['spearman']:.3f}.", "",
              "## PAT training data", "",
              "Tag counts: " + ", ".join(f"{k}: {v}" for k, v in r["pat"]["tag_counts"].items()),
              "", *tool_use_table(r), "## Samples", ""]
    for s in r["samples"]:
        lines += [f"**Prompt:** {s['prompt']}", "", f"- SFT: {s['sft']!r}", f"- PAT: {s['pat']!r}", ""]
    write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return images
