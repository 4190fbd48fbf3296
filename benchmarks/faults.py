"""Fault injection: kill PPO's actors at random points of short runs, and see whether the runs
finish by themselves and end where an uninterrupted run ends.

    python benchmarks/faults.py --runs 5

Starts a local Ray, trains (or reuses) a small SFT model and preference model, runs PPO once
uninterrupted as the reference, then ``--runs`` times: starts the same PPO run, waits for a random
iteration past the first checkpoint, SIGKILLs a random role's actor (policy, critic, reference or
preference model), and lets the run finish (the driver restarts the roles from the last
checkpoint, ``ray.max_restarts``). Each run's final metrics and policy weights are compared with
the reference's. Prints a table and a summary line; ``--out`` writes them as JSON.

    python benchmarks/faults.py --lose-node

Loses a whole node instead: a simulated two-node cluster (``ray.cluster_utils.Cluster``: a head of
``HEAD_CPUS`` logical CPUs and a second node of ``SIDE_CPUS``) where PPO's roles ask for the CPUs
of ``NODE_ROLES``, so Ray places the policy and the preference model on the head and the critic and
the reference on the second node. Once the run has logged a random iteration past its first
checkpoint, that node is removed (its raylet and every actor on it die at once); the run must finish
on the head alone, after a restart, with the reference's weights and final metrics.
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
# --lose-node: the roles' logical CPUs and the nodes'. Ray places each role's placement group on the
# node with the most CPUs free: the policy (3) on the head (6 > 5), the critic and the reference on the
# second node (5 > 3, 4 > 3), the preference model back on the head; the head alone holds all four.
NODE_ROLES = ["ray.policy.num_cpus=3", "ray.critic.num_cpus=1", "ray.reference.num_cpus=1", "ray.preference.num_cpus=1"]
HEAD_CPUS, SIDE_CPUS = 6, 5


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


def role_nodes(run_prefix: str) -> dict[str, str]:
    """The node id of the live rank-0 actor of each role whose name starts with ``run_prefix``."""
    import ray

    out = {}
    for a in ray.util.list_named_actors(all_namespaces=True):
        role = a["name"].rsplit("/", 1)[-1]
        if a["name"].startswith(run_prefix) and role.endswith("-0") and role[:-2] in ROLES:
            out[role[:-2]] = ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).node_id.remote())
    return out


def digest(model_dir: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(model_dir.glob("*.safetensors")):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def run_ppo(address: str, cache: Path, run_dir: Path, iterations: int, kill: tuple[int, str] | None,
            extra: tuple[str, ...] = (), lose: tuple[int, Any] | None = None) -> dict[str, Any]:
    """One PPO run (killing ``kill = (iteration, role)`` once it has logged that iteration, or removing
    the node of ``lose = (iteration, (cluster, node))`` then)."""
    cmd = [sys.executable, "run.py", "+experiment=ppo", f"ray.address={address}", f"cache_dir={cache}",
           f"hydra.run.dir={run_dir}", *SMALL, *extra, f"algo.iterations={iterations}", "algo.checkpoint_every=2",
           "resume=false"]  # each run starts afresh (a restart within it resumes from its own checkpoints)
    started = time.time()
    with open(run_dir.with_suffix(".log"), "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
                                env=dict(os.environ, WANDB_MODE="offline", PYTHONPATH=str(ROOT)))
        killed = None
        at = kill[0] if kill is not None else lose[0] if lose is not None else None
        if at is not None:
            while latest_iteration(run_dir) < at and proc.poll() is None:
                time.sleep(0.2)  # polling the run's own log for its progress
            if proc.poll() is None and kill is not None:
                kill_role("ppo-", kill[1])
                killed = {"iteration": latest_iteration(run_dir), "role": kill[1]}
            elif proc.poll() is None and lose is not None:
                cluster, node = lose[1]
                placed = role_nodes("ppo-")
                cluster.remove_node(node, allow_graceful=False)
                killed = {"iteration": latest_iteration(run_dir), "node": node.node_id,
                          "roles_on_it": sorted(r for r, n in placed.items() if n == node.node_id),
                          "roles_elsewhere": sorted(r for r, n in placed.items() if n != node.node_id)}
        proc.wait()
    out: dict[str, Any] = {"returncode": proc.returncode, "killed": killed, "wall_s": time.time() - started}
    if proc.returncode == 0:
        results = json.loads((run_dir / "results.json").read_text())
        out |= {"restarts": results.get("restarts", 0), "final": {k: results["ppo"]["final"].get(k) for k in COMPARED},
                "policy": results["artifacts"]["ppo"], "digest": digest(Path(results["artifacts"]["ppo"]))}
    return out


def matches(run: dict[str, Any], reference: dict[str, Any]) -> bool:
    """Whether ``run`` finished with the reference's policy weights and final metrics."""
    return run["returncode"] == 0 and run["digest"] == reference["digest"] and all(
        abs(run["final"][k] - reference["final"][k]) <= 1e-6 for k in COMPARED if reference["final"][k] is not None)


def lose_node(args: argparse.Namespace) -> dict[str, Any]:
    """``--lose-node``: the reference run and one run that loses the critic's and the reference's node."""
    import ray
    from ray.cluster_utils import Cluster

    for attempt in range(3):  # a raylet gives up after 30 s when the machine is too busy to start it
        try:
            cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": HEAD_CPUS, "include_dashboard": False})
        except Exception as err:  # noqa: BLE001  (Ray raises a bare Exception for a node that did not start)
            print(f"the head node did not start ({err}); attempt {attempt + 1} of 3", flush=True)
            continue
        try:
            side = cluster.add_node(num_cpus=SIDE_CPUS)
            break
        except Exception as err:  # noqa: BLE001
            print(f"the second node did not start ({err}); attempt {attempt + 1} of 3", flush=True)
            cluster.shutdown()
    else:
        sys.exit("could not start a two-node Ray cluster")
    try:
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace="alignment-lab")
        work = Path(tempfile.mkdtemp(prefix="faults-node-"))
        extra = (*NODE_ROLES, *args.set)
        print(f"reference run (two nodes, uninterrupted, {args.iterations} iterations) in {work}", flush=True)
        reference = run_ppo(cluster.address, work / "cache", work / "reference", args.iterations, None, extra)
        if reference["returncode"]:
            sys.exit(f"the reference run failed: see {work / 'reference.log'}")
        shutil.rmtree(reference["policy"], ignore_errors=True)  # so the next run trains PPO again
        at = random.Random(args.seed).randint(3, args.iterations - 1)
        run = run_ppo(cluster.address, work / "cache", work / "lost", args.iterations, None, extra,
                      (at, (cluster, side)))
        run["matched"] = matches(run, reference)
        lost = run["killed"] or {}
        print(f"lost the node of {lost.get('roles_on_it')} at iteration {lost.get('iteration')} (kept "
              f"{lost.get('roles_elsewhere')}): {'finished' if run['returncode'] == 0 else 'FAILED'}, restarts "
              f"{run.get('restarts')}, {'matches' if run['matched'] else 'DIFFERS FROM'} the reference, "
              f"{run['wall_s']:.0f} s (reference {reference['wall_s']:.0f} s)", flush=True)
        if run["returncode"]:
            print((work / "lost.log").read_text()[-4000:], flush=True)
        shutil.rmtree(work, ignore_errors=True)
        return {"reference": reference, "runs": [run]}
    finally:
        ray.shutdown()
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--iterations", type=int, default=12)
    parser.add_argument("--seed", type=int, default=0, help="where and whom to kill")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (e.g. data.n_train=64 for a quicker chain)")
    parser.add_argument("--lose-node", action="store_true",
                        help="remove the node that holds the critic and the reference from a two-node cluster")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    if args.lose_node:
        out = lose_node(args)
        if args.out:
            args.out.write_text(json.dumps(out, indent=2))
        return
    import ray

    from actors.session import init_ray

    init_ray(num_cpus=2, include_dashboard=False)
    address = ray.get_runtime_context().gcs_address
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    rng = random.Random(args.seed)
    print(f"reference run (uninterrupted, {args.iterations} iterations; SFT and PM trained first) in {work}",
          flush=True)
    reference = run_ppo(address, work / "cache", work / "reference", args.iterations, None, tuple(args.set))
    if reference["returncode"]:
        sys.exit(f"the reference run failed: see {work / 'reference.log'}")
    rows = []
    for i in range(args.runs):
        shutil.rmtree(reference["policy"], ignore_errors=True)  # so the next run trains PPO again
        kill = (rng.randint(3, args.iterations - 1), rng.choice(ROLES))
        r = run_ppo(address, work / "cache", work / f"run{i}", args.iterations, kill, tuple(args.set))
        r["matched"] = matches(r, reference)
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
