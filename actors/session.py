"""Starting or joining Ray, and telling the user where the dashboard is."""

from __future__ import annotations

import ray

from experiments.config import RayConfig


def init_ray(cfg: RayConfig, namespace: str = "alignment-lab") -> str | None:
    """Join ``cfg.address`` when set, else start a local instance. Returns the dashboard URL."""
    if ray.is_initialized():
        return None
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    if cfg.address:
        ctx = ray.init(address=cfg.address, namespace=namespace, runtime_env=runtime_env, log_to_driver=True)
    else:
        ctx = ray.init(
            num_cpus=cfg.num_cpus, namespace=namespace, runtime_env=runtime_env,
            include_dashboard=cfg.include_dashboard, dashboard_host=cfg.dashboard_host,
            dashboard_port=cfg.dashboard_port,
        )
    url = getattr(ctx, "dashboard_url", None) or None
    if url and not url.startswith("http"):
        url = f"http://{url}"
    print(f"Ray dashboard: {url or 'disabled'}", flush=True)
    return url
