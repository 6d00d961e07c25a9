"""Batch rendering: Parquet manifests in, clips in object storage out (see wan_dist.batch.manifest).

This package's names are batch's public API: the other front doors (the HTTP API's batches) start a run
(``BatchRunner``, on an ``engine.dispatch.SharedGroup``), validate a manifest and read a run's results through
them, never through a module inside the package (the import contracts in pyproject.toml hold them to it).
"""

from wan_dist.batch.manifest import (
    MANIFEST_SCHEMA,
    REQUIRED_COLUMNS,
    RESERVED_COLUMNS,
    Manifest,
    ManifestError,
    ManifestRow,
    RowError,
    derive_seed,
    frames_for_duration,
    manifest_from_prompts,
    manifest_from_table,
    manifest_table,
    read_manifest,
    write_manifest,
)
from wan_dist.batch.gallery import GalleryError, gallery_uri, write_gallery
from wan_dist.batch.results import read_results
from wan_dist.batch.runner import BatchRunner, run_batch

__all__ = ["MANIFEST_SCHEMA", "REQUIRED_COLUMNS", "RESERVED_COLUMNS", "BatchRunner", "GalleryError", "Manifest",
           "ManifestError", "ManifestRow", "RowError", "derive_seed", "frames_for_duration",
           "gallery_uri", "manifest_from_prompts", "manifest_from_table", "manifest_table", "read_manifest",
           "read_results", "run_batch", "write_gallery", "write_manifest"]
