"""Batch rendering: Parquet manifests in, clips in object storage out (see wan_dist.batch.manifest)."""

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

__all__ = ["MANIFEST_SCHEMA", "REQUIRED_COLUMNS", "RESERVED_COLUMNS", "Manifest", "ManifestError", "ManifestRow",
           "RowError", "derive_seed", "frames_for_duration", "manifest_from_prompts", "manifest_from_table",
           "manifest_table", "read_manifest", "write_manifest"]
