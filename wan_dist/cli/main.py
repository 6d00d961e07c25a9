"""``wan-dist <verb> [hydra overrides]``: compose config -> typed dataclasses -> library call.

This package is the only one that imports hydra/omegaconf.
"""

from __future__ import annotations

import logging
import sys

from wan_dist.cli.compose import conf_dir, rewrite_overrides, run_hydra

__all__ = ["main", "conf_dir", "rewrite_overrides"]

log = logging.getLogger("wan_dist")
VERBS = ("render", "make-checkpoint", "plan", "manifest", "batch", "serve")
LATER: dict[str, str] = {}


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: wan-dist {{{'|'.join(VERBS)}}} [key=value ...]   (Hydra overrides; see conf/)")
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
    else:
        raise SystemExit(f"wan-dist: unknown verb {verb!r}; known: {', '.join(VERBS)}")
    run_hydra(verb, task, overrides)


if __name__ == "__main__":
    main()
