"""The Serve application: an ``api`` ingress deployment (the FastAPI app) and one ``renderer-<model>``
deployment per model served, each replica a RendererCore owning a render group (its placement-group bundles)
and taking that model's jobs and batches from the shared store.

``application(settings)`` builds it for ``serve.run``; ``wan_dist.serve.deploy:build_app`` is the entry of
Serve config files and KubeRay RayService manifests (here, not beside the FastAPI app: the app knows nothing of
Ray Serve). The store is the only channel between them, so
any number of renderer replicas (``renderer.replicas``, or between the bounds of ``renderer.autoscaling`` by
the length of the model's queue: ``wan_dist.serve.autoscale``) pull from one queue, and a restart of either
side loses nothing.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

from ray import serve

from wan_dist.serve.app import create_app
from wan_dist.serve.settings import ServeSettings, settings_from_dict, settings_to_dict
from wan_dist.serve.state import ServeState

__all__ = ["application", "build_app", "Renderer"]

_STATE: dict[str, ServeState] = {}
_LOCK = threading.Lock()


# The ServeState of this process (the ingress replica's, made in its __init__). Module-level functions on
# purpose: Serve pickles the FastAPI app apart from the ingress class, so anything the routes and the class
# share must be found by import in the replica (pickled by reference), never captured in a closure or a
# dynamic function's globals (each pickle would carry its own copy: a second ServeState, with a second
# webhook notifier delivering every event again and a /readyz that ignores the renderers).
def _process_state(settings: ServeSettings) -> ServeState:
    with _LOCK:
        if "state" not in _STATE:
            _STATE["state"] = ServeState(settings)
        return _STATE["state"]


def _install_state(state: ServeState) -> None:
    with _LOCK:
        old, _STATE["state"] = _STATE.get("state"), state
    if old is not None:
        old.close()


# Renderers answer no HTTP traffic (they pull jobs from the store): a short graceful shutdown is enough, a job
# cut off is requeued when its lease expires.
@serve.deployment(ray_actor_options={"num_cpus": 0}, health_check_period_s=10, graceful_shutdown_timeout_s=5,
                  graceful_shutdown_wait_loop_s=1)
class Renderer:
    def __init__(self, settings: dict, model: str):
        from wan_dist.serve.renderer import RendererCore

        self.core = RendererCore(settings_from_dict(settings), model).start()

    def ready(self) -> bool:
        return self.core.ready

    def check_health(self) -> None:
        if not self.core.ready:
            raise RuntimeError(f"renderer of {self.core.model}: job loop not running")

    def __del__(self):
        core = getattr(self, "core", None)
        if core is not None:
            core.stop(timeout_s=5)


def application(settings: ServeSettings):
    settings = _placed(settings)
    plain = settings_to_dict(settings)

    api = create_app(settings, state=lambda: _process_state(settings))

    # Serve's default of 5 ongoing requests per replica throttles the API 6x (benchmarks/RESULTS.md): creates are
    # short store writes, so the ingress takes many at once.
    @serve.deployment(name="api", ray_actor_options={"num_cpus": 0}, max_ongoing_requests=1000)
    @serve.ingress(api)
    class Ingress:
        def __init__(self, renderers: dict):
            self.renderers = renderers
            _install_state(ServeState(settings, ready=self.ready))

        def ready(self) -> bool:
            """Every model with replicas kept up has a loaded one; a model that may scale to zero is ready to
            take jobs without one (its first queued job brings a replica up)."""
            try:
                return all(handle.ready.remote().result(timeout_s=5) for model, handle in self.renderers.items()
                           if not on_demand(model))
            except Exception:  # noqa: BLE001 - not answering is not ready
                return False

    env = {"env_vars": dict(settings.env)} if settings.env else None
    # One placement-group bundle per rank of the replica's render group; the replica itself (no resources)
    # sits in bundle 0 beside rank 0, and its ranks are placed in bundles 0..n-1 (renderer.group_config).
    group = settings.renderer.group
    bundles = [group.rank_bundle() for _ in range(group.world_size)]
    options = {"num_cpus": 0, "num_gpus": 0, **({"runtime_env": env} if env else {})}
    scaling = settings.renderer.autoscaling

    def on_demand(model: str) -> bool:
        return scaling is not None and scaling.min_replicas == 0

    def replicas(model: str) -> dict:  # a fixed count, or bounds and a queue-length policy (serve/autoscale.py)
        if scaling is None:
            return {"num_replicas": settings.renderer.replicas}
        return {"autoscaling_config": scaling.serve_config(settings.store, model)}

    renderers = {model: Renderer.options(name=f"renderer-{model}", ray_actor_options=options,
                                         placement_group_bundles=bundles, placement_group_strategy="STRICT_PACK",
                                         **replicas(model)).bind(plain, model)
                 for model in settings.models}
    return Ingress.options(ray_actor_options={"num_cpus": 0, **({"runtime_env": env} if env else {})}
                           ).bind(renderers)


def build_app(args: dict[str, Any]):
    """Serve application for config files (`serve run` / `serve deploy`, KubeRay RayService):
    ``import_path: wan_dist.serve.deploy:build_app`` with ``args`` = ServeSettings as plain data (its blocks
    nested, as ``serve.app`` of conf/serve.yaml)."""
    return application(settings_from_dict(dict(args)))


def _placed(settings: ServeSettings) -> ServeSettings:
    """``settings`` with the renderer group's ``use_gpus`` decided for this cluster (None: GPUs when it has
    them): the replicas' bundles are fixed when the application is built."""
    group = settings.renderer.group
    if group.use_gpus is not None:
        return settings
    import ray

    placed = group.for_cluster(ray.cluster_resources())
    return dataclasses.replace(settings, renderer=dataclasses.replace(settings.renderer, group=placed))
