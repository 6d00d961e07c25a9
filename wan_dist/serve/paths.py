"""What a tenant may see of the server's storage: names relative to the server's output, and messages without
server paths (issue 20: a view names no server path).

``relative`` is how every view names an output (a job's clip, a batch's folder, a results row's clip);
``public_message`` is how every view shows an error built from an exception, which may quote the output's
files (``cannot read /srv/out/...``), another server path, or a traceback with the package's own files.
"""

from __future__ import annotations

import re

__all__ = ["relative", "public_message"]

TRACEBACK = "Traceback (most recent call last):"
# an absolute path (or a file:// URL) starting a token: at the start, after a space, a quote, "(", "[", "=" or ","
# ("https://host/a" is not one: its "//" follows a ":")
_START = r"""(?<![^\s'"(\[=,])"""
_ABSOLUTE = re.compile(_START + r"""(?:file://)?/[^\s'"(),\]]+""")
# an object-store URI (the operator's buckets: a model's, a LoRA store's, another output's); a tenant's http(s) URL
# is its own and stays
_BUCKET = re.compile(_START + r"""(?:s3|s3a|gs|gcs|az|abfs|abfss|oss|hdfs|memory)://[^\s'"(),\]]+""")


def _roots(output_root: str) -> list[str]:
    """The spellings of the output root a stored URI may use (a local folder with or without ``file://``)."""
    root = output_root.rstrip("/")
    if root.startswith("file://"):
        return [root, root[len("file://"):]]
    if root.startswith("/"):
        return ["file://" + root, root]
    return [root]


def relative(uri: str, output_root: str) -> str:
    """``uri`` relative to the server's output when it lies there (an upload, a clip, a batch's folder), else as
    it was given (a tenant's own URL)."""
    for root in _roots(output_root):
        if uri == root:
            return ""
        if uri.startswith(root + "/"):
            return uri[len(root) + 1:]
    return uri


def public_message(text: str | None, output_root: str) -> str | None:
    """``text`` as a tenant may read it: without a traceback, the output's files relative to it, and any other
    absolute path or object-store URI reduced to its last name (``…/render.py``, ``s3://…/x.safetensors``)."""
    if not text:
        return text
    text = text.split(TRACEBACK, 1)[0].rstrip()
    for root in _roots(output_root):
        text = re.sub(_START + re.escape(root) + "/", "", text)
    text = _BUCKET.sub(lambda match: match.group(0).split("://", 1)[0] + "://…/"
                       + match.group(0).rstrip("/").rsplit("/", 1)[-1], text)
    return _ABSOLUTE.sub(lambda match: "…/" + match.group(0).rstrip("/").rsplit("/", 1)[-1], text)
