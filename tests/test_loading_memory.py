"""Loading holds about one copy of the weights: measured as peak resident memory in a fresh process.

The child runs with glibc's mmap threshold at 64 KiB so freed tensors leave the process at once and
resident memory tracks live memory. The naive load (build the module, then read every shard into a
state dict, then load it) is measured the same way, to show the measurement can tell them apart.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow

CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch

    def reset():
        Path("/proc/self/clear_refs").write_text("5")

    def peak():
        line = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmHWM:")][0]
        return int(line.split()[1]) * 1024

    def rss():
        line = [l for l in Path("/proc/self/status").read_text().splitlines() if l.startswith("VmRSS:")][0]
        return int(line.split()[1]) * 1024

    from safetensors.torch import load_file
    from wan_dist.models.checkpoint import detect_checkpoint, load_dit
    from wan_dist.models.dit import WanDiT
    from wan_dist.models.keymap import dit_keys_from_diffusers

    mode, folder = sys.argv[1], sys.argv[2]
    info = detect_checkpoint(folder)
    expert = info.expert_dirs[0]
    with torch.device("meta"):  # first use of the meta device imports torch's meta kernels (~60 MB, once)
        WanDiT(info.spec.dit)
    reset(); base = rss()
    if mode == "ours":
        model = load_dit(expert, info.spec.dit, layout=info.layout)
    else:
        model = WanDiT(info.spec.dit)
        state = {}
        for shard in sorted(expert.glob("*.safetensors")):
            state.update(load_file(str(shard)))
        model.load_state_dict(dit_keys_from_diffusers(state))
        del state
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak": peak() - base, "weights": weights}))
""")


def _measure(mode: str, folder) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "65536",
           "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_loading_peak_stays_near_one_copy_of_the_weights(checkpoint_factory):
    folder = checkpoint_factory("small", "diffusers")  # ~50 MB per expert in 2 MB shards
    ours = _measure("ours", folder)
    naive = _measure("naive", folder)
    assert ours["weights"] > 40 * 2**20
    assert ours["peak"] <= 1.25 * ours["weights"], ours
    assert naive["peak"] >= 1.8 * naive["weights"], naive  # the measurement sees a second copy
