"""The renderers' queue-length autoscaling policy (wan_dist.serve.autoscale), called the way Serve's controller
calls it: an AutoscalingContext in, (replicas, state) out, wrapped by Serve's own bounds-and-delays logic."""

from __future__ import annotations

import pytest

from wan_dist.serve.autoscale import POLICY, QueueLengthPolicy, RendererAutoscaling, desired_replicas
from wan_dist.serve.batches import batch_queue
from wan_dist.serve.jobs import Job
from wan_dist.serve.stores import open_store


def context(current: int, target: int | None = None, config=None):
    from ray.serve._private.common import DeploymentID
    from ray.serve.config import AutoscalingConfig, AutoscalingContext

    return AutoscalingContext(
        deployment_id=DeploymentID(name="renderer-tiny", app_name="wan"), deployment_name="renderer-tiny",
        app_name="wan", current_num_replicas=current, target_num_replicas=current if target is None else target,
        running_replicas=[], total_num_requests=0.0, total_queued_requests=0.0, aggregated_metrics={},
        raw_metrics={}, capacity_adjusted_min_replicas=(config.min_replicas if config else 0),
        capacity_adjusted_max_replicas=(config.max_replicas if config else 8), policy_state={},
        last_scale_up_time=None, last_scale_down_time=None, current_time=0.0,
        config=config or AutoscalingConfig(min_replicas=0, max_replicas=8))


@pytest.mark.parametrize("queued, running, per, want", [
    (0, 0, 1, 0), (1, 0, 1, 1), (5, 0, 1, 5), (5, 0, 2, 3), (0, 3, 2, 3), (1, 3, 2, 3), (4, 3, 2, 4), (1, 0, 0.5, 2)])
def test_desired_replicas(queued, running, per, want):
    assert desired_replicas(queued, running, per) == want


def add(store, model: str, n: int) -> list[Job]:
    return [store.create(Job.new(model=model, owner="k", request={"prompt": "p"}))[0] for _ in range(n)]


def test_the_policy_counts_jobs_and_batches_of_its_model_in_the_store(tmp_path):
    uri = str(tmp_path / "jobs.db")
    policy = QueueLengthPolicy(store=uri, model="tiny", jobs_per_replica=2, refresh_s=1e-9)
    assert policy(context(0)) == (0, {})
    with open_store(uri) as store:
        add(store, "tiny", 3)
        add(store, batch_queue("tiny"), 2)
        add(store, "ti2v-5b", 7)  # another model's queue is not this deployment's demand
        assert policy(context(0)) == (3, {})  # 5 queued / 2 per replica
        for worker in ("w1", "w2", "w3"):
            store.claim("tiny", worker=worker, lease_s=60)
        store.claim(batch_queue("tiny"), worker="b1", lease_s=60)
        assert policy.demand() == (1, 4)
        assert policy(context(3)) == (4, {})  # never below the jobs being rendered


def test_the_policy_recounts_at_most_every_refresh_s_and_holds_when_the_store_fails(tmp_path):
    uri = str(tmp_path / "jobs.db")
    policy = QueueLengthPolicy(store=uri, model="tiny", refresh_s=3600)
    assert policy(context(1)) == (0, {})
    with open_store(uri) as store:
        add(store, "tiny", 2)
    assert policy(context(1)) == (0, {})  # the count of an hour ago still stands
    policy.refresh_s = 1e-9
    assert policy(context(1)) == (2, {})

    broken = QueueLengthPolicy(store=str(tmp_path / "missing" / "dir" / "jobs.db"), model="tiny")
    broken._store = None
    broken.store_uri = "s3://"  # not a store: every count fails
    assert broken(context(2, target=3)) == (3, {})  # holds the controller's current target


def test_serves_own_wrapper_applies_the_bounds_and_scales_from_zero(tmp_path):
    """The policy as Serve runs it: imported from POLICY, instantiated with the deployment's policy_kwargs, wrapped
    with the scaling factors and delays of the config that deploy.py builds (Serve clips the result to
    min/max_replicas afterwards)."""
    from ray.serve._private.autoscaling_state import _resolve_policy_callable
    from ray.serve.autoscaling_policy import _apply_autoscaling_config
    from ray.serve.config import AutoscalingConfig

    uri = str(tmp_path / "jobs.db")
    scaling = RendererAutoscaling(min_replicas=0, max_replicas=3, jobs_per_replica=1, upscale_delay_s=0,
                                  downscale_delay_s=0, refresh_s=1e-9)
    config = AutoscalingConfig(**scaling.serve_config(uri, "tiny"))
    assert config.policy.policy_function == POLICY
    policy = _apply_autoscaling_config(_resolve_policy_callable(config.policy))
    assert policy(context(0, config=config))[0] == 0
    with open_store(uri) as store:
        add(store, "tiny", 5)
    assert policy(context(0, config=config))[0] == 5  # from zero at once (no replica could report a metric)
    with open_store(uri) as store:
        for job in store.list(limit=10)[0]:
            store.request_cancel(job.id)
    assert policy(context(3, config=config))[0] == 1  # the queue emptied: Serve steps down to 1, then to 0
    assert policy(context(1, config=config))[0] == 0
