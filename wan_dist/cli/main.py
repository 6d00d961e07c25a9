"""``wan-dist <verb> [hydra overrides]``: compose config -> typed dataclasses -> library call.

This package is the only one that imports hydra/omegaconf.
"""

from __future__ import annotations

import logging
import sys

from wan_dist.cli.compose import conf_dir, rewrite_overrides, run_hydra

__all__ = ["main", "usage", "conf_dir", "rewrite_overrides"]

log = logging.getLogger("wan_dist")
# Each verb with the one line `wan-dist --help` shows for it; its settings are in conf/<verb>.yaml.
VERBS = {
    "render": "render one clip (prompt, image or a sidecar to reproduce) into a folder or URL",
    "batch": "render every row of a Parquet manifest on Ray render groups (what `ray job submit` runs)",
    "manifest": "write a Parquet batch manifest from a text file of prompts",
    "gallery": "write the HTML gallery of a batch output (thumbnails, prompts, status, reasons, links)",
    "serve": "start the HTTP API (job endpoints and the OpenAI-style videos API) on Ray Serve",
    "plan": "choose a parallel layout for a model on N GPUs, with the candidates and the reasons",
    "make-checkpoint": "write a random-weight checkpoint of a preset in the reference or diffusers layout",
    "train": "train the toy (or toy-i2v) model (VAE, then the two experts) on Ray Train; a rerun resumes",
    "train-lora": "train a LoRA on a base model from captioned clips or images, on Ray Train; a rerun resumes",
    "calibrate-cache": "measure a checkpoint's step-cache profile (magcache) on a few renders; written beside it",
}
LATER: dict[str, str] = {}


def usage() -> str:
    """What ``wan-dist --help`` prints: how to call it and one line per verb."""
    width = max(len(verb) for verb in VERBS)
    lines = ["usage: wan-dist <verb> [key=value ...]   settings as Hydra overrides (conf/<verb>.yaml)",
             "       wan-dist <verb> --help            a verb's settings and their defaults",
             "       wan-dist --version", "", "verbs:"]
    lines += [f"  {verb:<{width}}  {line}" for verb, line in VERBS.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return
    if argv[0] == "--version":
        from wan_dist import __version__

        print(f"wan-dist {__version__}")
        return
    verb, overrides = argv[0], argv[1:]
    if verb in LATER:
        raise SystemExit(f"wan-dist {verb}: not available yet (comes with {LATER[verb]})")
    if verb == "render":
        from wan_dist.cli.render import render_main as task
    elif verb == "make-checkpoint":
        from wan_dist.cli.render import make_checkpoint_main as task
    elif verb == "plan":
        from wan_dist.cli.plan import plan_main as task
    elif verb == "serve":
        from wan_dist.cli.serve import serve_main as task
    elif verb == "batch":
        from wan_dist.cli.batch import batch_main as task
    elif verb == "manifest":
        from wan_dist.cli.manifest import manifest_main as task
    elif verb == "gallery":
        from wan_dist.cli.gallery import gallery_main as task
    elif verb == "train":
        from wan_dist.cli.train import train_main as task
    elif verb == "train-lora":
        from wan_dist.cli.train import train_lora_main as task
    elif verb == "calibrate-cache":
        from wan_dist.cli.calibrate import calibrate_cache_main as task
    else:
        raise SystemExit(f"wan-dist: unknown verb {verb!r}; known: {', '.join(VERBS)} (wan-dist --help says more)")
    run_hydra(verb, task, overrides)


if __name__ == "__main__":
    main()
