"""``wan-dist serve [overrides]``: start the HTTP API on Ray Serve and block (Ctrl-C stops it).

Joins the cluster named by ``RAY_ADDRESS`` or starts a local Ray. ``serve.host`` defaults to
127.0.0.1; ``serve.app`` holds the ServeSettings fields, each concern in its block (conf/serve.yaml).
"""

from __future__ import annotations

import logging
import os
import signal
import time

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("wan_dist")


def serve_main(cfg: DictConfig) -> None:
    import ray
    from ray import serve

    from wan_dist.serve.deploy import application
    from wan_dist.serve.settings import settings_from_dict

    try:
        settings = settings_from_dict(OmegaConf.to_container(cfg.serve.app, resolve=True))
    except ValueError as error:  # names the field by its path: serve.webhooks.max_attempts: must be >= 1
        raise SystemExit(f"wan-dist serve: {error}") from None
    if settings.store.startswith("sqlite:///") and not settings.store.startswith("sqlite:////"):
        os.makedirs(os.path.dirname(settings.store[len("sqlite:///"):]) or ".", exist_ok=True)
    ray.init(address=os.environ.get("RAY_ADDRESS", "local"))
    serve.start(http_options={"host": cfg.serve.host, "port": int(cfg.serve.port)})
    serve.run(application(settings), name="wan-dist", route_prefix="/", blocking=False)
    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops it as cleanly as Ctrl-C
    log.info("serving %s on http://%s:%d (Ctrl-C stops)", ", ".join(settings.models), cfg.serve.host, cfg.serve.port)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
        ray.shutdown()


def _interrupt(*_args) -> None:
    raise KeyboardInterrupt
