"""Screenshot of the Ray dashboard's Actors page during a PPO run, for the README.

    pip install playwright          # the Python driver; the browser is Debian's chromium
    python scripts/dashboard_screenshot.py docs/dashboard_actors.png

Starts a small ``+experiment=ppo`` run on its own local Ray (dashboard on, token authentication),
waits until the dashboard's HTTP API lists the four named roles, opens the Actors page in
headless Chromium with the token (``ray get-auth-token``) as the dashboard's cookie, saves the
page, and stops the run.
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROLES = ("policy", "critic", "reference", "preference")
RUN = ["+experiment=ppo", "data.n_train=240", "trainer.batch_size=8", "pm.n_prompts=16", "pm.n_val_prompts=6",
       "eval.n_prompts=8", "logger.wandb=false", "ray.num_cpus=2", "algo.iterations=400", "algo.rollout_batch_size=8",
       "algo.max_new_tokens=16", "algo.checkpoint_every=0"]


def live_roles(url: str, token: str) -> set[str]:
    """The PPO roles whose rank-0 actor the dashboard's HTTP API lists as alive (``token``: ``ray get-auth-token``)."""
    request = urllib.request.Request(f"{url}/api/v0/actors?limit=1000", headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=10) as r:
        actors = json.loads(r.read())["data"]["result"]["result"]
    names = [a.get("name") or "" for a in actors if a.get("state") == "ALIVE"]
    return {role for role in ROLES if any(n.endswith(f"/{role}-0") for n in names)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    from playwright.sync_api import sync_playwright

    env = dict(os.environ, WANDB_MODE="offline", RAY_AUTH_MODE="token")
    env.pop("RAY_ADDRESS", None)
    tmp = Path(tempfile.mkdtemp())
    cmd = [sys.executable, "run.py", *RUN, f"cache_dir={tmp / 'cache'}", f"hydra.run.dir={tmp / 'run'}"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    found: queue.Queue[str] = queue.Queue()

    def read() -> None:  # drain the run's output (a full pipe would stall it), and pick out the URL
        for line in proc.stdout:
            print(line, end="")
            if m := re.match(r"Ray dashboard: (http\S+)", line):
                found.put(m.group(1))

    threading.Thread(target=read, daemon=True).start()
    try:
        url = found.get(timeout=300)
        token = subprocess.run([str(Path(sys.executable).parent / "ray"), "get-auth-token"], env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
        deadline = time.time() + 600
        while live_roles(url, token) != set(ROLES):
            if proc.poll() is not None or time.time() > deadline:
                sys.exit("the four PPO roles never showed up in the dashboard")
            time.sleep(2)  # polling the dashboard's answer
        time.sleep(10)  # let a few iterations run, so the actors show their work
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=args.chromium, headless=True,
                                        args=["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                                              "--disable-component-update", "--disable-sync", "--no-first-run"])
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.context.add_cookies([{"name": "ray-authentication-token", "value": token, "url": url}])
            page.goto(f"{url}/#/actors", wait_until="networkidle")
            page.wait_for_selector("text=policy-0", timeout=60_000)
            args.out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(args.out), full_page=False)
            browser.close()
        print(f"wrote {args.out}")
    finally:
        stop(proc)


def stop(proc: subprocess.Popen) -> None:
    """End a run started in the background: SIGTERM, then SIGKILL after a minute."""
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


if __name__ == "__main__":
    main()
