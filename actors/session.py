"""Starting or joining Ray, and telling the user where the dashboard is."""

from __future__ import annotations

import os

import ray


def init_ray(address: str | None = None, num_cpus: int | None = None, include_dashboard: bool = True,
             dashboard_host: str = "127.0.0.1", dashboard_port: int | None = None,
             namespace: str = "alignment-lab") -> str | None:
    """Join the cluster at ``address`` when set, else start a local instance (the ``ray.*`` settings
    of the same names). Returns the dashboard URL."""
    if ray.is_initialized():
        return None
    runtime_env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    if address:
        ctx = ray.init(address=address, namespace=namespace, runtime_env=runtime_env, log_to_driver=True)
    else:
        ctx = ray.init(
            num_cpus=num_cpus, namespace=namespace, runtime_env=runtime_env,
            include_dashboard=include_dashboard, dashboard_host=dashboard_host, dashboard_port=dashboard_port,
        )
    url = getattr(ctx, "dashboard_url", None) or None
    if url and not url.startswith("http"):
        url = f"http://{url}"
    print(f"Ray dashboard: {url or 'disabled'}", flush=True)
    if url and token_auth():
        print("  it asks for a token: `ray get-auth-token` prints it (README, 'Watching a run')", flush=True)
    port = ctx.address_info.get("metrics_export_port")
    if port:
        print(f"Ray metrics (Prometheus format, the lab's as ray_lab_*): http://{ctx.address_info['node_ip_address']}:"
              f"{port}/metrics", flush=True)
    return url


def token_auth() -> bool:
    """Whether this Ray cluster asks for a token (``RAY_AUTH_MODE=token``, on by default since Ray 2.60)."""
    return os.environ.get("RAY_AUTH_MODE", "").lower() == "token"
