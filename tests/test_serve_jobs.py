"""The durable job store (wan_dist.serve.jobs): SQLite, and objects on file://, memory:// and a real S3 server."""

from __future__ import annotations

import multiprocessing
import pickle
import threading
import time
import uuid

import pytest

from wan_dist.serve.job_stores import SQLiteJobStore
from wan_dist.serve.object_job_store import ObjectJobStore
from wan_dist.serve.jobs import (
    IdempotencyConflict, InvalidTransition, Job, JobExists, JobNotFound, LeaseLost, VersionConflict, body_hash,
)
from wan_dist.serve.stores import open_store, sqlite_path
from wan_dist.storage import delete

BACKENDS = ["sqlite", "file", "memory"]
T0 = 1_000_000.0  # a fixed clock for lease and deadline tests


@pytest.fixture(params=BACKENDS)
def store_uri(request, tmp_path):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'jobs.db'}"  # sqlite:////abs/... (an absolute path)
    elif request.param == "file":
        yield (tmp_path / "store").as_uri()
    else:
        prefix = f"memory://jobs-test-{uuid.uuid4().hex}"
        yield prefix
        delete(prefix, recursive=True)


@pytest.fixture
def store(store_uri):
    with open_store(store_uri) as opened:
        yield opened


def new(model="tiny", owner="key1", **fields) -> Job:
    return Job.new(model=model, owner=owner, request={"prompt": "a cat", "num_frames": 5}, **fields)


def add(store, *args, **kwargs) -> Job:
    job, created = store.create(new(*args, **kwargs))
    assert created
    return job


def test_job_record_round_trips_and_validates():
    job = new(kind="video", deadline_s=60, now=T0, metadata={"ü": [1, 2]}, webhook_url="https://example.com/h")
    assert job.id.startswith("job_") and len(job.id) == 28 and job.id[4:].isalnum()
    assert job.status == "queued" and job.deadline_at == T0 + 60 and job.created_at == T0
    assert Job.from_dict(job.to_dict()) == job and Job.from_json(job.to_json()) == job
    assert Job.from_dict({**job.to_dict(), "added_by_a_newer_version": 1}) == job
    assert new().id != new().id
    for bad in ({"status": "done"}, {"kind": "image"}, {"progress": 101}, {"error": {"code": "x"}},
                {"attempts": -1}, {"id": "../escape"}, {"max_attempts": 0}):
        with pytest.raises(ValueError):
            Job(**{"id": "job_x", "model": "tiny", **bad})
    assert body_hash({"b": 1, "a": 2}) == body_hash({"a": 2, "b": 1}) != body_hash({"a": 2})
    assert body_hash(b"raw") == body_hash(b"raw")
    error = pickle.loads(pickle.dumps(IdempotencyConflict("used before", "job_abc")))  # Ray ships errors
    assert isinstance(error, IdempotencyConflict) and error.job_id == "job_abc" and str(error) == "used before"


def test_open_store_picks_the_backend(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert sqlite_path("sqlite:///rel/jobs.db") == "rel/jobs.db"
    assert sqlite_path("sqlite:////abs/jobs.db") == "/abs/jobs.db"
    for uri in ("sqlite://", "sqlite:///:memory:", "sqlite:rel.db"):
        with pytest.raises(ValueError):
            open_store(uri)
    with open_store("sqlite:///rel/jobs.db") as relative, open_store(str(tmp_path / "plain.db")) as plain:
        assert isinstance(relative, SQLiteJobStore) and relative.path == str(tmp_path / "rel" / "jobs.db")
        assert isinstance(plain, SQLiteJobStore)
    for uri in ("memory://somewhere", (tmp_path / "objects").as_uri(), str(tmp_path / "folder")):
        assert isinstance(open_store(uri), ObjectJobStore)


def check_durable(uri: str) -> None:
    with open_store(uri) as store:
        plain = add(store)
        keyed = add(store, model="wan2.2-t2v-a14b", kind="video", idempotency_key="k-1", body_hash="h1",
                    webhook_url="https://example.com/hook", metadata={"user": "ü"}, deadline_s=3600)
        done = add(store, owner="key2")
        store.claim("tiny", worker="w1", lease_s=30)
        done = store.update(done.id, status="completed", progress=100, result={"clip_uri": "s3://b/c.mp4"},
                            timings={"render_s": 1.5}, webhook={"job.completed": {"attempts": 1}})
        before = {job.id: job for job in store.list(limit=100)[0]}
    assert set(before) == {plain.id, keyed.id, done.id} and before[done.id] == done
    with open_store(uri) as reopened:
        after = {job.id: job for job in reopened.list(limit=100)[0]}
        assert after == before and reopened.get(plain.id).status == "in_progress"
        assert reopened.create(new(model="wan2.2-t2v-a14b", idempotency_key="k-1", body_hash="h1")) == (keyed, False)
        assert [job.id for job in reopened.list(order="asc")[0]] == [plain.id, keyed.id, done.id]


def test_a_reopened_store_has_every_job(store_uri):
    check_durable(store_uri)


def test_object_store_on_s3(s3_server):
    check_durable(s3_server.uri("jobs"))
    with open_store(s3_server.uri("jobs")) as store:
        first = add(store, model="s3m")
        second = add(store, model="s3m")
        assert store.claim("s3m", worker="w", lease_s=10).id == first.id
        assert store.queue_position(second.id) == 0
        assert store.delete(first.id).id == first.id and store.count(model="s3m") == 1


def test_idempotency_same_body_same_job_other_body_conflict(store):
    job, created = store.create(new(idempotency_key="abc", body_hash="h1"))
    assert created and job.version == 1
    again, created = store.create(new(idempotency_key="abc", body_hash="h1"))
    assert not created and again == job
    assert store.find_by_key("key1", "abc") == job
    assert store.find_by_key("key2", "abc") is None and store.find_by_key("key1", "abd") is None
    with pytest.raises(IdempotencyConflict) as raised:
        store.create(new(idempotency_key="abc", body_hash="h2"))
    assert raised.value.job_id == job.id and job.id in str(raised.value)
    other_owner, created = store.create(new(owner="key2", idempotency_key="abc", body_hash="h2"))
    assert created and other_owner.id != job.id
    plain = add(store)
    assert add(store).id != plain.id  # no key: every create is a new job
    assert store.count() == 4
    with pytest.raises(JobExists):
        store.create(plain)
    store.delete(job.id)  # a deleted job frees its key
    assert store.find_by_key("key1", "abc") is None
    assert store.create(new(idempotency_key="abc", body_hash="h2"))[1]


def test_concurrent_idempotent_creates_make_one_job(store):
    barrier = threading.Barrier(8)
    results, errors = [], []

    def create():
        try:
            barrier.wait(timeout=10)
            results.append(store.create(new(idempotency_key="same", body_hash="h")))
        except Exception as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=create) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert len({job.id for job, _ in results}) == 1 and sum(created for _, created in results) == 1
    assert store.count() == 1


def test_claim_is_fifo_per_model_and_skips_cancelled_or_late_jobs(store):
    a1, b1, a2 = add(store, model="a"), add(store, model="b"), add(store, model="a")
    late = add(store, model="a", deadline_s=5, now=T0)
    a3 = add(store, model="a")
    claimed = store.claim("a", worker="w1", lease_s=30, now=T0 + 10)
    assert claimed.id == a1.id and claimed.status == "in_progress" and claimed.attempts == 1
    assert claimed.lease_owner == "w1" and claimed.lease_until == T0 + 40 and claimed.started_at == T0 + 10
    assert claimed.version == 2 and store.get(a1.id) == claimed
    store.request_cancel(a2.id)
    assert store.claim("a", worker="w1", lease_s=30, now=T0 + 10).id == a3.id  # a2 cancelled, late past deadline
    assert store.claim("a", worker="w1", lease_s=30, now=T0 + 10) is None
    assert store.get(late.id).status == "queued"
    assert store.claim("b", worker="w2", lease_s=30).id == b1.id
    assert store.claim("b", worker="w2", lease_s=30) is None and store.claim("nope", worker="w", lease_s=1) is None


@pytest.mark.parametrize("backend", ["sqlite", "file"])
def test_racing_workers_claim_every_job_exactly_once(backend, tmp_path):
    uri = f"sqlite:///{tmp_path / 'jobs.db'}" if backend == "sqlite" else (tmp_path / "objects").as_uri()
    with open_store(uri) as store:
        created = {add(store, model="race").id for _ in range(24)}
        claimed, barrier = [], threading.Barrier(8)

        def work(worker):
            barrier.wait(timeout=10)
            while (job := store.claim("race", worker=worker, lease_s=60)) is not None:
                claimed.append(job.id)

        threads = [threading.Thread(target=work, args=(f"w{index}",)) for index in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(claimed) == sorted(created)
        assert store.count(model="race", status="in_progress") == 24


def test_expired_leases_requeue_then_fail_after_max_attempts(store):
    job = add(store, max_attempts=2)
    first = store.claim("tiny", worker="w1", lease_s=10, now=T0)
    renewed = store.renew(job.id, "w1", 10, now=T0 + 5)
    assert renewed.lease_until == T0 + 15
    with pytest.raises(LeaseLost):
        store.renew(job.id, "w2", 10, now=T0 + 5)
    assert store.release_expired(now=T0 + 14) == []
    store.update(job.id, progress=40, preview={"step": 2, "total": 5, "uri": "x.jpg"})
    (requeued,) = store.release_expired(now=T0 + 15)
    assert requeued.status == "queued" and requeued.lease_owner is None and requeued.progress == 0
    assert requeued.preview is None  # the next attempt starts without the last one's picture
    assert store.get(job.id) == requeued
    with pytest.raises(LeaseLost):  # the old renderer learns it lost the job
        store.renew(job.id, "w1", 10, now=T0 + 16)
    second = store.claim("tiny", worker="w2", lease_s=10, now=T0 + 20)
    assert second.attempts == 2 and second.started_at == first.started_at == T0
    (failed,) = store.release_expired(now=T0 + 31)
    assert failed.status == "failed" and failed.error["code"] == "worker_lost" and failed.completed_at == T0 + 31
    assert store.release_expired(now=T0 + 100) == [] and store.claim("tiny", worker="w3", lease_s=1) is None


def test_a_requeued_job_waits_out_its_backoff_while_later_jobs_are_claimed(store):
    first, second = add(store), add(store)
    assert store.claim("tiny", worker="w1", lease_s=10, now=T0).id == first.id
    requeued = store.finish(first.id, "w1", status="queued", retry_after=T0 + 10)
    assert requeued.status == "queued" and store.queue_position(first.id) == 0  # still first in line ...
    assert store.claim("tiny", worker="w2", lease_s=10, now=T0 + 1).id == second.id  # ... but not claimable yet
    assert store.claim("tiny", worker="w2", lease_s=10, now=T0 + 9.9) is None
    again = store.claim("tiny", worker="w2", lease_s=10, now=T0 + 10)
    assert (again.id, again.attempts, again.retry_after) == (first.id, 2, None)


def test_a_worker_requeues_a_failed_render_with_the_retry_policys_backoff(store):
    from wan_dist.serve.worker import JobWorker

    job = add(store, max_attempts=3)
    attempts = []

    def render(claimed):
        attempts.append(claimed.attempts)
        raise RuntimeError("storage timed out")

    worker = JobWorker(store, "tiny", render, worker_id="w1", retry_backoff_s=100.0)
    before = time.time()
    failed_once = worker.step()
    assert failed_once.status == "queued" and failed_once.error["code"] == "render_failed"
    # attempt 1 failed: claimable again after 100 s times a jitter in [0.5, 1.5)
    assert before + 50 <= failed_once.retry_after < time.time() + 150
    assert worker.step() is None  # nothing claimable meanwhile
    # time passes (the store's clock): attempts 2 and 3 fail as the first did
    store.claim("tiny", worker="w1", lease_s=10, now=failed_once.retry_after)
    second = worker._retry_or_fail(store.get(job.id), "RuntimeError: storage timed out")
    assert second.status == "queued" and second.retry_after - time.time() >= 100  # doubled: 200 s x [0.5, 1.5)
    store.claim("tiny", worker="w1", lease_s=10, now=second.retry_after)
    last = worker._retry_or_fail(store.get(job.id), "RuntimeError: storage timed out")
    assert (last.status, last.attempts, last.retry_after) == ("failed", 3, None)  # max_attempts spent: no retry
    assert attempts == [1]


def test_a_worker_hands_its_job_back_without_spending_an_attempt(store):
    job = add(store, max_attempts=1)
    store.claim("tiny", worker="w1", lease_s=10, now=T0)
    store.update(job.id, progress=40, preview={"step": 2, "total": 5, "uri": "x.jpg"})
    assert store.hand_back(job.id, "w2", now=T0 + 1).status == "in_progress"  # not the holder: nothing changes
    back = store.hand_back(job.id, "w1", now=T0 + 1)
    assert (back.status, back.attempts, back.lease_owner, back.lease_until, back.progress, back.preview) == (
        "queued", 0, None, None, 0, None)
    with pytest.raises(LeaseLost):  # the step control of the old holder stops its render
        store.renew(job.id, "w1", 10, now=T0 + 2)
    again = store.claim("tiny", worker="w2", lease_s=10, now=T0 + 2)
    assert again.id == job.id and again.attempts == 1  # max_attempts 1: still allowed to run
    store.request_cancel(job.id, now=T0 + 3)
    assert store.hand_back(job.id, "w2", now=T0 + 4).status == "cancelled"  # a cancel asked meanwhile ends it
    assert store.hand_back(job.id, "w2", now=T0 + 5).status == "cancelled"


def test_only_the_lease_holder_records_how_its_attempt_ended(store):
    job = add(store, max_attempts=3)
    store.claim("tiny", worker="w1", lease_s=10, now=T0)
    store.hand_back(job.id, "w1", now=T0 + 1)  # w1 is stopping; its render may still finish
    with pytest.raises(LeaseLost):
        store.finish(job.id, "w1", status="completed", result={"clip_uri": "old"})
    assert store.get(job.id).status == "queued"
    store.claim("tiny", worker="w2", lease_s=10, now=T0 + 2)
    with pytest.raises(LeaseLost):  # nor once another worker holds it
        store.finish(job.id, "w1", status="completed", result={"clip_uri": "old"})
    done = store.finish(job.id, "w2", status="completed", result={"clip_uri": "new"}, progress=100)
    assert (done.status, done.lease_owner, done.lease_until, done.result) == ("completed", None, None,
                                                                            {"clip_uri": "new"})
    with pytest.raises(LeaseLost):  # ended: nobody records another outcome
        store.finish(job.id, "w2", status="failed", error={"code": "render_failed", "message": "late"})


@pytest.mark.parametrize("how", ["handed back", "expired and claimed again"])
def test_a_worker_whose_render_outlived_its_lease_leaves_the_job_as_it_is(store, how):
    """JobWorker with a render that finishes after the job left it (its renderer was stopping, or its lease ran
    out and another worker took it): the job keeps its current state and is never completed by that render."""
    from types import SimpleNamespace

    from wan_dist.serve.worker import JobWorker

    job = add(store)
    changes = []

    def render(claimed):
        if how == "handed back":
            store.hand_back(claimed.id, worker.worker_id)
        else:
            store.release_expired(now=time.time() + 3600)
            store.claim("tiny", worker="w2", lease_s=3600)
        return SimpleNamespace(status="completed", clip_uri="late.mp4", sidecar_uri="late.json", seed=1, timings={})

    worker = JobWorker(store, "tiny", render, worker_id="w1", on_change=changes.append)
    after = worker.step()
    expected = ("queued", None) if how == "handed back" else ("in_progress", "w2")
    assert (after.status, after.lease_owner) == expected and after.result is None
    assert store.get(job.id) == after
    assert [c.status for c in changes] == ["in_progress"]  # the claim only: no outcome was published


def test_queue_positions_count_per_model(store):
    a = [add(store, model="a") for _ in range(3)]
    b = add(store, model="b")
    assert [store.queue_position(job.id) for job in a] == [0, 1, 2] and store.queue_position(b.id) == 0
    store.claim("a", worker="w", lease_s=30)
    assert [store.queue_position(job.id) for job in a] == [None, 0, 1]
    store.request_cancel(a[1].id)
    assert store.queue_position(a[2].id) == 0 and store.queue_position(a[1].id) is None
    assert store.count(model="a", status="queued") == 1 and store.count(model="a") == 3
    assert store.count(status=("queued", "in_progress")) == 3 and store.count(owner="nobody") == 0
    with pytest.raises(JobNotFound):
        store.queue_position("job_missing")
    with pytest.raises(ValueError):
        store.count(status="done")


def test_cancel_queued_running_and_finished_jobs(store):
    queued, running, finished = add(store), add(store), add(store)
    store.claim("tiny", worker="w", lease_s=30)  # queued (oldest) is claimed first: swap roles
    queued, running = running, queued
    cancelled = store.request_cancel(queued.id, now=T0)
    assert cancelled.status == "cancelled" and cancelled.completed_at == T0 and cancelled.error is None
    assert store.request_cancel(queued.id) == cancelled  # idempotent: no new version
    asked = store.request_cancel(running.id)
    assert asked.status == "in_progress" and asked.cancel_requested
    assert store.request_cancel(running.id) == asked
    assert store.renew(running.id, "w", 30).cancel_requested  # what the renderer sees between steps
    stopped = store.update(running.id, status="cancelled", completed_at=T0)
    assert stopped.status == "cancelled"
    store.claim("tiny", worker="w", lease_s=30)
    done = store.update(finished.id, status="completed", progress=100)
    assert store.request_cancel(finished.id) == done and done.status == "completed"
    # a cancel asked of a renderer that then died ends cancelled, not retried
    crashed = add(store)
    store.claim("tiny", worker="w", lease_s=10, now=T0)
    store.request_cancel(crashed.id)
    assert [job.status for job in store.release_expired(now=T0 + 11)] == ["cancelled"]


def test_deadlines_fail_late_jobs_with_timeout(store):
    waiting = add(store, deadline_s=10, now=T0)
    running = add(store, deadline_s=20, now=T0)
    finished = add(store, deadline_s=5, now=T0)
    forever = add(store)
    store.update(finished.id, status="completed")
    store.update(running.id, status="in_progress", lease_owner="w", lease_until=T0 + 100)
    assert store.expire_deadlines(now=T0 + 9) == []
    (first,) = store.expire_deadlines(now=T0 + 10)
    assert first.id == waiting.id and first.status == "failed" and first.error["code"] == "timeout"
    assert not first.cancel_requested and first.completed_at == T0 + 10
    (second,) = store.expire_deadlines(now=T0 + 25)
    assert second.id == running.id and second.status == "failed" and second.cancel_requested
    with pytest.raises(LeaseLost):
        store.renew(running.id, "w", 30)
    assert store.get(forever.id).status == "queued" and store.get(finished.id).status == "completed"
    assert store.expire_deadlines(now=T0 + 1e6) == []


def test_paging_with_after_and_has_more(store):
    mine = []
    for index in range(7):
        mine.append(add(store, model="a" if index % 2 else "b", kind="video" if index < 3 else "job"))
        add(store, owner="key2")
    ids = [job.id for job in mine]
    page, more = store.list(owner="key1", limit=3)
    assert [job.id for job in page] == ids[::-1][:3] and more
    page, more = store.list(owner="key1", limit=3, after=page[-1].id)
    assert [job.id for job in page] == ids[::-1][3:6] and more
    page, more = store.list(owner="key1", limit=3, after=page[-1].id)
    assert [job.id for job in page] == ids[:1] and not more
    page, more = store.list(owner="key1", limit=4, order="asc", after=ids[2])
    assert [job.id for job in page] == ids[3:7] and not more
    assert [job.id for job in store.list(owner="key1", model="a", order="asc")[0]] == ids[1::2]
    assert [job.id for job in store.list(owner="key1", kind="video", order="asc")[0]] == ids[:3]
    store.claim("b", worker="w", lease_s=30)
    assert store.list(status="in_progress")[0][0].id == ids[0]
    assert len(store.list(limit=100)[0]) == 14 and store.list(owner="nobody") == ([], False)
    other = store.list(owner="key2", limit=1)[0][0]
    for after in ("job_unknown", other.id):  # another owner's id is no cursor for this owner
        with pytest.raises(JobNotFound):
            store.list(owner="key1", after=after)
    with pytest.raises(ValueError):
        store.list(limit=0)


def test_updates_are_versioned_and_terminal_states_stay(store):
    job = add(store)
    moved = store.update(job.id, expected_version=1, progress=50, timings={"load_s": 0.1})
    assert moved.version == 2 and moved.progress == 50 and moved.updated_at >= job.updated_at
    with pytest.raises(VersionConflict):
        store.update(job.id, expected_version=1, progress=60)
    failed = store.update(job.id, status="failed", error={"code": "render_error", "message": "boom"})
    for status in ("queued", "in_progress", "completed", "cancelled"):
        with pytest.raises(InvalidTransition):
            store.update(job.id, status=status)
    kept = store.update(job.id, status="failed", webhook={"job.failed": {"delivered": True}})
    assert kept.version == failed.version + 1 and kept.webhook == {"job.failed": {"delivered": True}}
    for fields in ({"seq": 5}, {"version": 9}, {"id": "job_other"}, {"colour": "red"}, {"progress": 200}):
        with pytest.raises(ValueError):
            store.update(job.id, **fields)
    for call in (lambda: store.get("job_missing"), lambda: store.update("job_missing", progress=1),
                 lambda: store.request_cancel("job_missing"), lambda: store.delete("job_missing")):
        with pytest.raises(JobNotFound):
            call()


def test_delete_removes_the_record(store):
    job, other = add(store), add(store)
    assert store.delete(job.id) == job
    with pytest.raises(JobNotFound):
        store.get(job.id)
    assert [found.id for found in store.list()[0]] == [other.id] and store.count() == 1


def _race_in_child(uri, env, shared_id, ready, go, claimed_all, results):
    """Runs in a spawned process: reads the parent's job, adds its own, then races the parent: an
    idempotent create with the parent's key, claims, and progress updates while the parent cancels."""
    import os

    os.environ.update(env)
    with open_store(uri) as store:
        seen = store.get(shared_id).model
        own = [store.create(new(model="from-child"))[0].id for _ in range(3)]
        ready.set()
        go.wait(30)
        keyed = store.create(new(model="keyed", idempotency_key="same", body_hash="h"))[0].id
        claimed = []
        while (job := store.claim("race", worker="child", lease_s=60)) is not None:
            claimed.append(job.id)
            time.sleep(0.005)  # pace both claimers so their writes interleave
        claimed_all.wait(60)
        for step in range(1, 6):  # read-modify-write the records the parent is cancelling meanwhile
            for job_id in claimed:
                store.update(job_id, progress=step)
        results.put((seen, own, keyed, claimed))


@pytest.mark.parametrize("backend", ["sqlite", "file", "s3"])
def test_processes_share_a_store_without_losing_a_write(backend, tmp_path, request):
    """Two processes on one store: every job claimed once, one job per idempotency key, and a cancel
    asked while the other process updates the same records survives (no lost update)."""
    env = {}
    if backend == "sqlite":
        uri = f"sqlite:///{tmp_path / 'jobs.db'}"
    elif backend == "file":
        uri = (tmp_path / "objects").as_uri()
    else:
        server = request.getfixturevalue("s3_server")
        uri, env = server.uri("jobs"), server.env
    context = multiprocessing.get_context("spawn")
    with open_store(uri) as store:
        created = [add(store, model="race").id for _ in range(24)]
        ready, go, claimed_all, results = context.Event(), context.Event(), context.Event(), context.Queue()
        child = context.Process(target=_race_in_child, args=(uri, env, created[0], ready, go, claimed_all, results))
        child.start()
        try:
            assert ready.wait(90), "the child process never opened the store"
            go.set()
            keyed = store.create(new(model="keyed", idempotency_key="same", body_hash="h"))[0].id
            mine = []
            while (job := store.claim("race", worker="parent", lease_s=60)) is not None:
                mine.append(job.id)
                time.sleep(0.005)
            claimed_all.set()
            for job_id in created:
                store.request_cancel(job_id)
            seen, own, their_keyed, theirs = results.get(timeout=90)
        finally:
            child.join(60)
        assert child.exitcode == 0 and seen == "race"
        assert sorted(mine + theirs) == sorted(created) and not set(mine) & set(theirs)
        assert {job.id for job in store.list(model="from-child")[0]} == set(own)
        assert {store.get(job_id).lease_owner for job_id in theirs} <= {"child"}
        assert their_keyed == keyed and store.count(model="keyed") == 1
        assert all(store.get(job_id).cancel_requested for job_id in created)
        assert {store.get(job_id).progress for job_id in theirs} <= {5}
