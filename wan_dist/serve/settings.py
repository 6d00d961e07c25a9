"""``ServeSettings``: the typed config of ``wan-dist serve`` (``serve.app`` of conf/serve.yaml, the ``args`` of
``wan_dist.serve.deploy:build_app`` in Serve config files), one block per concern:

* top level: what is served and where things live (``models``, ``sources``, ``layout``, ``store``, ``output``,
  ``env``, ``allow_private_urls``);
* ``auth``: who may call; ``limits``: how much one key and one model's queue may take;
* ``jobs``: a job's life in the queue (attempts, deadline, lease, poll hint, result URLs);
* ``batches``: batches on the renderers' groups; ``previews``: preview frames of rendering jobs;
* ``webhooks``: deliveries; ``renderer``: replicas per model and their render group (a ``GroupSpec``, the same
  block as ``batch.group`` of a batch run).

:func:`settings_from_dict` builds it from plain data and names a bad value by its full path
(``serve.webhooks.max_attempts: must be >= 1, got 0``).
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping

from wan_dist.config import GroupSpec, from_dict
from wan_dist.serve.autoscale import RendererAutoscaling

__all__ = ["AuthSettings", "BatchSettings", "JobSettings", "LimitSettings", "PreviewSettings", "RendererSettings",
           "ServeSettings", "WebhookSettings", "settings_from_dict", "settings_to_dict"]

log = logging.getLogger("wan_dist.serve")


def _check(owner: object, condition: bool, name: str, reason: str) -> None:
    if not condition:
        raise ValueError(f"{type(owner).__name__}.{name}: {reason}, got {getattr(owner, name)!r}")


@dataclass(frozen=True, kw_only=True)
class AuthSettings:
    """Bearer keys accepted (plus those of ``$WAN_DIST_API_KEYS``); ``allow_anonymous``: no key needed."""

    api_keys: tuple[str, ...] = ()
    allow_anonymous: bool = False


@dataclass(frozen=True, kw_only=True)
class LimitSettings:
    """Admission: ``rate_per_s`` / ``burst`` requests per key (token bucket); at most ``max_active_per_key``
    queued + in-progress jobs per key and ``max_queue_per_model`` queued jobs per model (429 past them);
    ``max_json_bytes``: a JSON body's size, read no further (413; room for a 20 MiB image as a data: URI)."""

    rate_per_s: float = 10.0
    burst: int = 20
    max_active_per_key: int = 100
    max_queue_per_model: int = 1000
    max_json_bytes: int = 32 * 2**20

    def __post_init__(self) -> None:
        _check(self, self.rate_per_s > 0, "rate_per_s", "must be > 0")
        for name in ("burst", "max_active_per_key", "max_queue_per_model", "max_json_bytes"):
            _check(self, int(getattr(self, name)) >= 1, name, "must be >= 1")


@dataclass(frozen=True, kw_only=True)
class JobSettings:
    """A job's life in the queue (batches are jobs too). ``max_attempts``: renders of a job (and of each batch
    row) before it fails; ``default_deadline_s``: a job not done by then fails (its body may set its own);
    ``lease_s``: a renderer's lease on its job, renewed while it renders (a dead renderer's job reruns after
    it); ``poll_after_ms``: the ``openai-poll-after-ms`` hint; ``presign_expires_s``: result URLs' lifetime;
    ``retry_backoff_s``: a job whose render failed is requeued and claimed again after this, doubling per attempt
    (with jitter: engine.dispatch.RetryPolicy, as batch rows)."""

    max_attempts: int = 3
    default_deadline_s: float = 3600.0
    lease_s: float = 60.0
    poll_after_ms: int = 2000
    presign_expires_s: int = 3600
    retry_backoff_s: float = 1.0

    def __post_init__(self) -> None:
        _check(self, int(self.max_attempts) >= 1, "max_attempts", "must be >= 1")
        _check(self, self.retry_backoff_s >= 0, "retry_backoff_s", "must be >= 0")
        for name in ("default_deadline_s", "lease_s"):
            _check(self, getattr(self, name) > 0, name, "must be > 0")
        for name in ("poll_after_ms", "presign_expires_s"):
            _check(self, int(getattr(self, name)) >= 0, name, "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class BatchSettings:
    """Batches on the renderers' groups. ``interactive_per_row``: fair turns, at most this many interactive
    jobs while a batch row waits; a row's retries back off from ``retry_backoff_s``; the results table is
    written every ``results_flush_rows`` rows. A tenant's manifest holds at most ``max_rows`` rows whose columns
    decode to at most ``max_decoded_bytes`` (checked from the Parquet footer, before anything is decompressed).
    ``max_steps_per_key``: the denoising steps (each valid row's steps times its windows) a key's unfinished
    batches may hold together; a batch that would pass it is refused with a 429 (0: no budget)."""

    interactive_per_row: int = 2
    retry_backoff_s: float = 2.0
    results_flush_rows: int = 25
    max_rows: int = 100_000
    max_decoded_bytes: int = 256 * 2**20
    max_steps_per_key: int = 0

    def __post_init__(self) -> None:
        for name in ("interactive_per_row", "results_flush_rows", "max_rows", "max_decoded_bytes"):
            _check(self, int(getattr(self, name)) >= 1, name, "must be >= 1")
        _check(self, self.retry_backoff_s >= 0, "retry_backoff_s", "must be >= 0")
        _check(self, int(self.max_steps_per_key) >= 0, "max_steps_per_key", "must be >= 0 (0: no budget)")


@dataclass(frozen=True, kw_only=True)
class PreviewSettings:
    """Preview frames of a rendering job (SSE ``preview`` events, ``/v1/jobs/{id}/preview``): at most one every
    ``every_s`` seconds (0: none), at most ``max_side`` pixels on a side (wan_dist/engine/preview.py)."""

    every_s: float = 2.0
    max_side: int = 256

    def __post_init__(self) -> None:
        _check(self, self.every_s >= 0, "every_s", "must be >= 0")
        _check(self, int(self.max_side) >= 16, "max_side", "must be >= 16")


@dataclass(frozen=True, kw_only=True)
class WebhookSettings:
    """Deliveries: up to ``max_attempts`` tries with exponential backoff from ``base_delay_s``, signed with
    ``secret`` (``whsec_...``; None: ``$WAN_DIST_WEBHOOK_SECRET``, generated and logged once if unset)."""

    max_attempts: int = 8
    base_delay_s: float = 1.0
    secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        _check(self, int(self.max_attempts) >= 1, "max_attempts", "must be >= 1")
        _check(self, self.base_delay_s >= 0, "base_delay_s", "must be >= 0")


@dataclass(frozen=True, kw_only=True)
class RendererSettings:
    """Each served model's renderer deployment: ``replicas`` of it, or between the bounds of ``autoscaling``
    (None: a fixed count) by its queue length (wan_dist/serve/autoscale.py). Each replica owns one render group
    laid out and placed as ``group`` (one placement-group bundle per rank)."""

    replicas: int = 1
    autoscaling: RendererAutoscaling | None = None
    group: GroupSpec = field(default_factory=GroupSpec)

    def __post_init__(self) -> None:
        _check(self, int(self.replicas) >= 1, "replicas", "must be >= 1")
        _check(self, self.autoscaling is None or isinstance(self.autoscaling, RendererAutoscaling), "autoscaling",
               "must be a RendererAutoscaling or None")
        _check(self, isinstance(self.group, GroupSpec), "group", "must be a GroupSpec")


_BLOCKS = {"auth": AuthSettings, "limits": LimitSettings, "jobs": JobSettings, "batches": BatchSettings,
           "previews": PreviewSettings, "webhooks": WebhookSettings, "renderer": RendererSettings}


@dataclass(frozen=True, kw_only=True)
class ServeSettings:
    """What is served and where things live; each concern in its block (see the module doc)."""

    models: tuple[str, ...] = ("toy",)  # variants (presets) served, one renderer deployment each
    sources: dict = field(default_factory=dict)  # variant -> checkpoint source (default: the name)
    layout: str = "diffusers"  # layout embedded presets are written in
    store: str = "sqlite:///outputs/serve/jobs.db"
    output: str = "outputs/serve"  # clips land at {output}/{job id}/clip.mp4
    env: dict = field(default_factory=dict)  # environment of the API, renderer and rank processes (e.g. AWS_*)
    allow_private_urls: bool = False  # webhook, image and manifest URLs may point at loopback/private addresses
    # storage a tenant's request may name for its image and LoRAs (read with the server's credentials), besides
    # http(s) URLs and its own uploads (``{output}/_uploads``): e.g. ("s3://brand-assets/",)
    source_prefixes: tuple[str, ...] = ()
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    jobs: JobSettings = field(default_factory=JobSettings)
    batches: BatchSettings = field(default_factory=BatchSettings)
    previews: PreviewSettings = field(default_factory=PreviewSettings)
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    renderer: RendererSettings = field(default_factory=RendererSettings)

    def __post_init__(self) -> None:
        if not self.models:
            raise ValueError("ServeSettings.models: name at least one model")
        for name, block in _BLOCKS.items():
            _check(self, isinstance(getattr(self, name), block), name,
                   f"must be a {block.__name__} (settings_from_dict builds one from a mapping)")


# Where the fields of the flat ServeSettings (before the blocks) went. A flat name still works in plain data
# (old Serve config files) and is logged as moved.
_MOVED = {
    "api_keys": "auth.api_keys", "allow_anonymous": "auth.allow_anonymous",
    "rate_per_s": "limits.rate_per_s", "burst": "limits.burst", "max_active_per_key": "limits.max_active_per_key",
    "max_queue_per_model": "limits.max_queue_per_model",
    "max_attempts": "jobs.max_attempts", "default_deadline_s": "jobs.default_deadline_s", "lease_s": "jobs.lease_s",
    "poll_after_ms": "jobs.poll_after_ms", "presign_expires_s": "jobs.presign_expires_s",
    "interactive_per_batch_row": "batches.interactive_per_row", "batch_retry_backoff_s": "batches.retry_backoff_s",
    "batch_results_flush_rows": "batches.results_flush_rows",
    "preview_every_s": "previews.every_s", "preview_max_side": "previews.max_side",
    "webhook_max_attempts": "webhooks.max_attempts", "webhook_base_delay_s": "webhooks.base_delay_s",
    "webhook_secret": "webhooks.secret",
    "renderer_replicas": "renderer.replicas", "renderer_autoscaling": "renderer.autoscaling",
    "parallel": "renderer.group.parallel", "cpus_per_rank": "renderer.group.cpus_per_rank",
    "dtype": "renderer.group.dtype", "step_hook": "renderer.group.step_hook", "device": "renderer.group.use_gpus",
}


def _unflatten(data: dict) -> dict:
    """``data`` with the flat names of :data:`_MOVED` put where they live now (logged once per name)."""
    data = dict(data)
    for old in [k for k in data if k in _MOVED]:
        value, new = data.pop(old), _MOVED[old]
        if old == "device":  # "cpu" | "cuda" -> use_gpus
            value = value == "cuda" if value in ("cpu", "cuda") else value
        if old == "renderer_autoscaling" and value == {}:  # {} meant "a fixed replica count"
            value = None
        log.warning("serve settings: %r is now %r (the flat name still works for now)", old, new)
        *blocks, last = new.split(".")
        target = data
        for block in blocks:
            target[block] = target = dict(target.get(block) or {})
        target.setdefault(last, value)
    return data


def settings_from_dict(data: Mapping[str, Any]) -> ServeSettings:
    """ServeSettings from plain config (Hydra ``serve.app``, Serve ``args``): nested mappings become the blocks,
    lists tuples, model names variants; a bad value is named by its path (``serve.jobs.lease_s: ...``)."""
    data = _unflatten(dict(data))
    if "models" in data:  # public names (wan2.2-t2v-a14b) or variant names (t2v-a14b, tiny)
        from wan_dist.serve.schemas import MODEL_NAMES

        unknown = [m for m in data["models"] if m not in MODEL_NAMES]
        if unknown:
            raise ValueError(f"serve.models: unknown model(s) {unknown}; known: {sorted(MODEL_NAMES)}")
        data["models"] = tuple(MODEL_NAMES[m] for m in data["models"])
    return from_dict(ServeSettings, data, path="serve")


def settings_to_dict(settings: ServeSettings) -> dict:
    """Plain, JSON-able data (tuples as lists) that :func:`settings_from_dict` turns back into ``settings``."""
    def plain(value):
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(settings))
