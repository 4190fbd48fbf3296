"""Fault injection: kill PPO's actors at random points of short runs, and see whether the runs
finish by themselves and end where an uninterrupted run ends.

    python benchmarks/faults.py --runs 5

Starts a local Ray, trains (or reuses) a small SFT model and preference model, runs PPO once
uninterrupted as the reference, then ``--runs`` times: starts the same PPO run, waits for a random
iteration past the first checkpoint, SIGKILLs a random role's actor (policy, critic, reference or
preference model), and lets the run finish (the driver restarts the roles from the last
checkpoint, ``ray.max_restarts``). Each run's final metrics and policy weights are compared with
the reference's. Prints a table and a summary line; ``--out`` writes them as JSON.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("policy", "critic", "reference", "preference")
SMALL = ["data.n_train=800", "trainer.batch_size=8", "pm.n_prompts=24", "pm.n_val_prompts=6", "eval.n_prompts=16",
         "eval.max_new_tokens=32", "algo.rollout_batch_size=8", "algo.max_new_tokens=24", "logger.wandb=false"]
COMPARED = ("ppo/reward", "ppo/kl", "policy/policy_loss", "critic/value_loss")


def latest_iteration(run_dir: Path) -> int:
    """The newest PPO iteration the run has logged to its ``metrics.jsonl`` (0 before the first)."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return 0
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return max((int(r["ppo/iteration"]) for r in rows if "ppo/iteration" in r), default=0)


def kill_role(run_prefix: str, role: str) -> int:
    """SIGKILL the process of the live rank-0 actor of ``role`` whose name starts with ``run_prefix``
    (a run's actors are named ``<stage>-<id>/<role>-<rank>``), on the cluster this process is
    connected to (named actors come from the GCS: no dashboard needed); returns its pid."""
    import ray

    found = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(run_prefix) and a["name"].endswith(f"/{role}-0")]
    if len(found) != 1:
        raise RuntimeError(f"expected one live {role}-0 of {run_prefix}*, found {[a['name'] for a in found]}")
    actor = ray.get_actor(found[0]["name"], namespace=found[0]["namespace"])
    pid = ray.get(actor.pid.remote())
    os.kill(pid, signal.SIGKILL)
    return pid


def digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_ppo(address: str, cache: Path, run_dir: Path, iterations: int, kill: tuple[int, str] | None) -> dict[str, Any]:
    """One PPO run (killing ``kill = (iteration, role)`` once it has logged that iteration)."""
    cmd = [sys.executable, "run.py", "+experiment=ppo", f"ray.address={address}", f"cache_dir={cache}",
           f"hydra.run.dir={run_dir}", *SMALL, f"algo.iterations={iterations}", "algo.checkpoint_every=2"]
    started = time.time()
    with open(run_dir.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT)))
        killed = None
        if kill is not None:
            while latest_iteration(run_dir) < kill[0] and proc.poll() is None:
                time.sleep(0.2)  # polling the run's own log for its progress
            if proc.poll() is None:
                kill_role("ppo-", kill[1])
                killed = {"iteration": latest_iteration(run_dir), "role": kill[1]}
        proc.wait()
    out: dict[str, Any] = {"returncode": proc.returncode, "killed": killed, "wall_s": time.time() - started}
    if proc.returncode == 0:
        results = json.loads((run_dir / "results.json").read_text())
        out |= {"restarts": results.get("restarts", 0), "final": {k: results["ppo"]["final"].get(k) for k in COMPARED},
                "policy": results["artifacts"]["ppo"], "digest": digest(Path(results["artifacts"]["ppo"]))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="where and whom to kill")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    import ray

    from actors.session import init_ray

    init_ray(num_cpus=2, include_dashboard=False)
    address = ray.get_runtime_context().gcs_address
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    rng = random.Random(args.seed)
    print(f"reference run (uninterrupted, {args.iterations} iterations; SFT and PM trained first) in {work}",
          flush=True)
    reference = run_ppo(address, work / "cache", work / "reference", args.iterations, None)
    if reference["returncode"]:
        sys.exit(f"the reference run failed: see {work / 'reference.log'}")
    rows = []
    for i in range(args.runs):
        shutil.rmtree(reference["policy"], ignore_errors=True)  # so the next run trains PPO again
        kill = (rng.randint(3, args.iterations - 1), rng.choice(ROLES))
        r = run_ppo(address, work / "cache", work / f"run{i}", args.iterations, kill)
        r["matched"] = r["returncode"] == 0 and r["digest"] == reference["digest"] and all(
            abs(r["final"][k] - reference["final"][k]) <= 1e-6 for k in COMPARED if reference["final"][k] is not None)
        rows.append(r)
        k = r["killed"] or {"iteration": "-", "role": "(finished first)"}
        print(f"run {i}: killed {k['role']} at iteration {k['iteration']}: "
              f"{'finished' if r['returncode'] == 0 else 'FAILED'}, restarts {r.get('restarts')}, "
              f"{'matches' if r['matched'] else 'DIFFERS FROM'} the reference, {r['wall_s']:.0f} s", flush=True)
    finished = sum(r["returncode"] == 0 for r in rows)
    matched = sum(r["matched"] for r in rows)
    print(f"\n{finished} of {len(rows)} killed runs finished by themselves; {matched} ended with the reference's "
          f"weights and final metrics (reference {reference['wall_s']:.0f} s)")
    if args.out:
        args.out.write_text(json.dumps({"reference": reference, "runs": rows}, indent=2))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
