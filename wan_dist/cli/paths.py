"""Where a relative local path on the command line points, and when it points nowhere useful.

A user who types ``output=outputs/x`` means the folder beside them. In a plain ``wan-dist batch`` that is the
process's working directory, so a relative path is made absolute there (logs, results and the summary then name
one place). In a job that ``ray job submit`` started it is not: the driver runs in Ray's copy of
``--working-dir`` (unpacked under the head's ``runtime_resources/working_dir_files/``), Ray does not pass on the
folder the user submitted from (nor could it be reached: the submitter may be another machine), and the copy
is deleted with the job. Clips written there "succeed" and vanish, so a relative local output is refused there
with the fix in the message. A relative manifest is read from the copy when it is there (it travelled with
``--working-dir``, as the example manifests do) and refused when it is not (``.gitignore``'d files do not travel).

How a process knows it is a job's driver: Ray's job supervisor starts the entrypoint with the environment variable
``RAY_JOB_CONFIG_JSON_ENV_VAR`` set to the job's config as JSON (``{"runtime_env": {..., "working_dir":
"gcs://_ray_pkg_<hash>.zip"}, "metadata": {"job_submission_id": ...}}``): ``JobSupervisor._get_driver_env_vars``
in ``ray/dashboard/modules/job/job_supervisor.py`` (Ray 2.60), the name from ``ray/_private/runtime_env/constants.py``.
The caller passes the environment in (no environment is read here).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["RAY_JOB_CONFIG_ENV", "RayJob", "ray_job", "is_local_path", "resolve_output", "resolve_input"]

RAY_JOB_CONFIG_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"
_FIX = "an absolute path (on storage every node of the cluster shares) or a URL such as s3://bucket/prefix"


@dataclass(frozen=True, kw_only=True)
class RayJob:
    """The submitted Ray job this process is the driver of."""

    submission_id: str | None  # what `ray job status` / `ray job logs` take
    working_dir: str | None  # the runtime env's working_dir package (gcs://_ray_pkg_<hash>.zip), if one was given


def ray_job(environ: Mapping[str, str]) -> RayJob | None:
    """The Ray job whose driver runs with ``environ``, or None when it is no job's driver."""
    text = environ.get(RAY_JOB_CONFIG_ENV)
    if not text:
        return None
    try:
        config = json.loads(text)
    except ValueError:
        config = {}
    config = config if isinstance(config, dict) else {}  # set by Ray: its presence is the signal
    runtime_env = config.get("runtime_env") or {}
    metadata = config.get("metadata") or {}
    return RayJob(submission_id=metadata.get("job_submission_id"), working_dir=runtime_env.get("working_dir"))


def is_local_path(uri: str) -> bool:
    """A path of the local filesystem (no ``scheme://``)."""
    return "://" not in uri


def _describe(job: RayJob, cwd: str) -> str:
    name = f"Ray job {job.submission_id}" if job.submission_id else "a Ray job"
    if job.working_dir:
        return f"{name}, whose working directory {cwd} is Ray's temporary copy of --working-dir"
    return f"{name}, whose working directory {cwd} is not the folder `ray job submit` ran in"


def resolve_output(field: str, uri: str, *, cwd: str, job: RayJob | None) -> str:
    """``uri`` made absolute against ``cwd`` when it is a relative local path; a URL as it is.

    Raises ValueError naming ``field`` for a relative local path inside a Ray job (see the module docstring).
    """
    if not is_local_path(uri):
        return uri
    path = os.path.expanduser(uri)
    if os.path.isabs(path):
        return os.path.normpath(path)
    if job is not None:
        raise ValueError(f"{field}: {uri!r} is a relative local path, and this runs inside {_describe(job, cwd)}: "
                         f"what is written there is lost when the job ends. Use {_FIX} (e.g. {field}=$PWD/{uri} in the "
                         f"`ray job submit` command when the cluster runs on the machine you submit from).")
    return os.path.normpath(os.path.join(cwd, path))


def resolve_input(field: str, uri: str, *, cwd: str, job: RayJob | None) -> str:
    """Like :func:`resolve_output` for a file that is read: inside a Ray job a relative path is read from the
    job's copy of ``--working-dir`` when it is there, refused otherwise."""
    if not is_local_path(uri):
        return uri
    path = os.path.expanduser(uri)
    if os.path.isabs(path):
        return os.path.normpath(path)
    full = os.path.normpath(os.path.join(cwd, path))
    if job is not None and not (job.working_dir and os.path.exists(full)):
        raise ValueError(f"{field}: {uri!r} is a relative local path, and this runs inside {_describe(job, cwd)}, "
                         f"where there is no such file (files that .gitignore or .rayignore name do not travel). "
                         f"Put it inside --working-dir, or use {_FIX}.")
    return full
