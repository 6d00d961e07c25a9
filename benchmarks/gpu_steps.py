"""What only a GPU can show: full-size DiT forwards, the CUDA attention paths, VAE decode, peak memory.

Random weights at the released sizes (bf16), one process, one GPU. Each section appends JSON lines to
``{out}/gpu_steps.jsonl`` as it finishes (so a run stopped at its limit keeps what it measured):

- ``env``: torch, the card, which SDPA kernels torch may pick.
- ``attention``: our ``attention_with_lse`` (the flash kernel's log-sum-exp, what ring attention merges by)
  against an fp32 reference; a ring of R blocks merged by log-sum-exp (one padded) against one SDPA call;
  and the compute of one rank of ring-R (its L/R queries over R blocks of L/R keys) against one rank of
  Ulysses-R (all L queries and keys, H/R heads): the ratio the planner assumes is
  ``RING_ATTENTION_EFFICIENCY``.
- ``dit``: one forward of our ``WanDiT`` against diffusers' ``WanTransformer3DModel`` holding the same
  weights (diffusers' bf16 policy, ours keeps its fp32 parameters), alternating, best of ``--repeats``
  after a warm-up each; peak memory above the weights; the relative difference of the two outputs; the
  cost model's prediction of time and activation memory (``wan_dist.parallel.costs``) for comparison.
- ``vae``: one decode of random latents (Wan 2.1 / 2.2 VAE, diffusers' ``AutoencoderKLWan``), time and peak.

    python benchmarks/gpu_steps.py --out outputs/gpu                       # the full-size defaults, CUDA
    python benchmarks/gpu_steps.py --device cpu --dtype float32 --dit small@256x256x17 \\
        --vae small@64x64x9 --attention small@4096 --out /tmp/gpu_steps     # the same code on a CPU
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import re
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import torch

from wan_dist.models.attention import sdpa_attention
from wan_dist.models.dit import WanDiT
from wan_dist.models.keymap import dit_config_to_diffusers, dit_keys_from_diffusers
from wan_dist.models.presets import get_preset
from wan_dist.models.vae import WanVAE, build_vae
from wan_dist.parallel import attention as parallel_attention
from wan_dist.parallel import costs
from wan_dist.parallel.attention import _merge, attention_with_lse

DEFAULT_DIT = ["t2v-a14b@832x480x81", "t2v-a14b@1280x720x81", "ti2v-5b@1280x704x121"]
DEFAULT_VAE = ["t2v-a14b@1280x720x81", "ti2v-5b@1280x704x121"]
DEFAULT_ATTENTION = ["t2v-a14b@75600"]
RING = 4


class Recorder:
    def __init__(self, out: Path, budget_s: float):
        out.mkdir(parents=True, exist_ok=True)
        self.path = out / "gpu_steps.jsonl"
        self.start, self.budget_s = time.perf_counter(), budget_s

    def write(self, record: dict) -> None:
        record = {"elapsed_s": round(time.perf_counter() - self.start, 1), **record}
        line = json.dumps(record, default=str)
        print(line, flush=True)
        with open(self.path, "a") as handle:
            handle.write(line + "\n")

    def over_budget(self, what: str) -> bool:
        if time.perf_counter() - self.start <= self.budget_s:
            return False
        self.write({"section": "skipped", "case": what, "reason": f"past --budget-s {self.budget_s}"})
        return True


def parse_case(text: str) -> tuple[str, int, int, int]:
    """'preset@WxHxF' -> (preset, width, height, frames)."""
    match = re.fullmatch(r"([\w-]+)@(\d+)x(\d+)x(\d+)", text)
    if not match:
        raise SystemExit(f"case {text!r}: expected preset@WIDTHxHEIGHTxFRAMES")
    return match[1], int(match[2]), int(match[3]), int(match[4])


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def allocated(device: torch.device) -> int:
    return torch.cuda.memory_allocated(device) if device.type == "cuda" else 0


@contextmanager
def peak_above_base(device: torch.device, result: dict):
    """Sets result['peak_bytes'] to the peak allocation above what was allocated on entry (CUDA only)."""
    if device.type == "cuda":
        sync(device)
        torch.cuda.reset_peak_memory_stats(device)
    base = allocated(device)
    yield
    sync(device)
    result["peak_bytes"] = (torch.cuda.max_memory_allocated(device) - base) if device.type == "cuda" else None


def timed(fn, device: torch.device) -> tuple[float, int | None, object]:
    result: dict = {}
    with peak_above_base(device, result):
        start = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - start
    return seconds, result["peak_bytes"], out


def env_record(device: torch.device) -> dict:
    record = {"section": "env", "torch": torch.__version__, "python": platform.python_version(),
              "device": str(device)}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        record.update(gpu=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                      capability=f"{props.major}.{props.minor}", sms=props.multi_processor_count,
                      flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
                      cudnn_sdp=torch.backends.cuda.cudnn_sdp_enabled(),
                      efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())
    try:
        import diffusers

        record["diffusers"] = diffusers.__version__
    except ImportError:
        record["diffusers"] = None
    return record


# ---------------------------------------------------------------------------------------- attention


def reference_attention(q, k, v, rows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 softmax attention of the first ``rows`` queries: (out [B, rows, h, D], lse [B, h, rows])."""
    qt, kt, vt = (t.transpose(1, 2).float() for t in (q[:, :rows], k, v))
    scores = torch.matmul(qt, kt.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    lse = torch.logsumexp(scores, dim=-1)
    out = torch.matmul(torch.softmax(scores, dim=-1), vt)
    return out.transpose(1, 2), lse


def ring_merged(q, k, v, blocks: int, key_length: int) -> torch.Tensor:
    """What ring attention computes on one rank, without the exchange: the keys in ``blocks`` blocks,
    each attended with its log-sum-exp (the padded tail trimmed), merged by log-sum-exp."""
    chunk = k.shape[1] // blocks
    out = lse = None
    for index in range(blocks):
        valid = min(chunk, key_length - index * chunk)
        if valid <= 0:
            continue
        ks, vs = (t[:, index * chunk:index * chunk + valid] for t in (k, v))
        block_out, block_lse = attention_with_lse(q, ks, vs)
        out, lse = _merge(out, lse, block_out, block_lse)
    return out.to(q.dtype)


def max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in fp32."""
    a, b = a.float(), b.float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def attention_section(rec: Recorder, case: str, device, dtype, repeats: int) -> None:
    preset, length = case.split("@")
    config = get_preset(preset).dit
    heads, head_dim, length = config.num_heads, config.dim // config.num_heads, int(length)
    length -= length % RING
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, length, heads, head_dim, generator=gen, device=device, dtype=dtype) for _ in range(3))
    rows = min(128, length)
    ref_out, ref_lse = reference_attention(q, k, v, rows)
    out, lse = attention_with_lse(q, k, v)
    full = sdpa_attention(q, k, v)
    key_length = length - length // (2 * RING)  # the last block half padding
    ring = ring_merged(q[:, :rows], k, v, RING, key_length)
    ring_ref, _ = reference_attention(q, k[:, :key_length], v[:, :key_length], rows)
    record = {"section": "attention", "case": case, "tokens": length, "heads": heads, "head_dim": head_dim,
              "dtype": str(dtype), "lse_max_abs_err": float((lse[:, :, :rows] - ref_lse).abs().max()),
              "lse_out_rel_err": max_rel(out[:, :rows], ref_out),
              "sdpa_rel_err": max_rel(full[:, :rows], ref_out),
              "lse_out_vs_sdpa_rel": max_rel(out.to(dtype), full),
              f"ring{RING}_padded_rel_err": max_rel(ring, ring_ref)}
    del out, lse, full, ring
    # One rank's attention compute: ring-R (L/R queries, R blocks of L/R keys, all heads) against
    # Ulysses-R (all L queries and keys, H/R heads). Same FLOPs; the ratio is ring's efficiency.
    q_ring = q[:, :length // RING].contiguous()
    q_uly, k_uly, v_uly = (t[:, :, :heads // RING].contiguous() for t in (q, k, v))
    best_ring = best_uly = float("inf")
    for attempt in range(repeats + 1):  # the first of each is a warm-up
        t_ring, _, _ = timed(lambda: ring_merged(q_ring, k, v, RING, length), device)
        t_uly, _, _ = timed(lambda: sdpa_attention(q_uly, k_uly, v_uly), device)
        if attempt:
            best_ring, best_uly = min(best_ring, t_ring), min(best_uly, t_uly)
    flops = 4.0 * (heads // RING) * length * length * head_dim
    record.update({f"ring{RING}_rank_s": best_ring, f"ulysses{RING}_rank_s": best_uly,
                   "ring_efficiency_vs_ulysses": best_uly / best_ring,
                   "ulysses_rank_tflops": flops / best_uly / 1e12,
                   "planner_ring_efficiency": costs.RING_ATTENTION_EFFICIENCY})
    if device.type == "cuda":
        record["sdpa_backend_s"] = sdpa_backend_times(q_uly, k_uly, v_uly, device, repeats)
        record["lse_kernel_ring_rank_s"] = lse_kernel_times(q_ring, k, v, length, device, repeats)
    rec.write(record)


def lse_kernel_times(q, k, v, length: int, device, repeats: int) -> dict[str, float | str]:
    """Best time of one ring rank's attention with each CUDA log-sum-exp kernel alone."""
    times: dict[str, float | str] = {}
    saved = parallel_attention.CUDA_LSE_KERNELS
    for kernel in saved:
        parallel_attention.CUDA_LSE_KERNELS = (kernel,)
        try:
            times[kernel] = min(timed(lambda: ring_merged(q, k, v, RING, length), device)[0]
                                for _ in range(repeats + 1))
        except RuntimeError as error:
            times[kernel] = f"unavailable: {str(error).splitlines()[0][:120]}"
        finally:
            parallel_attention.CUDA_LSE_KERNELS = saved
    return times


def sdpa_backend_times(q, k, v, device, repeats: int) -> dict[str, float | str]:
    """Best time of SDPA on (q, k, v) per kernel torch can be told to use ("default": its own choice)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    choices = {"default": None, "flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION,
               "efficient": SDPBackend.EFFICIENT_ATTENTION}
    times: dict[str, float | str] = {}
    for name, backend in choices.items():
        try:
            with sdpa_kernel([backend]) if backend is not None else nullcontext():
                times[name] = min(timed(lambda: sdpa_attention(q, k, v), device)[0] for _ in range(repeats + 1))
        except RuntimeError as error:  # this kernel does not take these inputs here
            times[name] = f"unavailable: {str(error).splitlines()[0][:120]}"
    return times


# ---------------------------------------------------------------------------------------- DiT


def build_pair(preset: str, device: torch.device, dtype: torch.dtype):
    """diffusers' WanTransformer3DModel (its default init, seeded) and our WanDiT on the same tensors.

    diffusers' model is built on the device in ``dtype`` with its ``_keep_in_fp32_modules`` in fp32;
    ours takes the same tensors where its dtype policy agrees (the big matrices) and fp32 copies of the
    few it keeps in fp32 and diffusers does not.
    """
    from diffusers import WanTransformer3DModel

    spec = get_preset(preset)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            theirs = WanTransformer3DModel.from_config(dit_config_to_diffusers(spec.dit))
    finally:
        torch.set_default_dtype(previous)
    keep = tuple(getattr(theirs, "_keep_in_fp32_modules", None) or ())
    for name, param in theirs.named_parameters():
        if any(module in name for module in keep):
            param.data = param.data.float()
    theirs.eval().requires_grad_(False)
    with torch.device("meta"):
        ours = WanDiT(spec.dit)
    state = {}
    for name, tensor in dit_keys_from_diffusers(theirs.state_dict()).items():
        fp32 = any(re.search(p, name) for p in WanDiT.fp32_param_patterns)
        state[name] = tensor.to(torch.float32 if fp32 else dtype)
    ours.load_state_dict(state, strict=True, assign=True)
    ours.timestep_precision = "float32"  # diffusers' convention, as the loader sets for this layout
    ours.eval().requires_grad_(False)
    return spec, ours, theirs


def dit_inputs(spec, width: int, height: int, frames: int, device, dtype):
    gen = torch.Generator(device=device).manual_seed(1)
    stride = spec.vae.spatial_stride
    latents = torch.randn(1, spec.dit.in_channels, (frames - 1) // 4 + 1, height // stride, width // stride,
                          generator=gen, device=device, dtype=dtype)
    context = torch.randn(1, spec.dit.text_len, spec.dit.text_dim, generator=gen, device=device, dtype=dtype)
    context[:, 24:] = 0  # a 24-token prompt, zero padded as the text encoder's output is
    timestep = torch.tensor([700.0], device=device)
    return latents, timestep, context


def dit_section(rec: Recorder, preset: str, cases: list[tuple[int, int, int]], device, dtype, repeats: int,
                batch2: bool = False) -> None:
    spec, ours, theirs = build_pair(preset, device, dtype)
    weights = sum(p.numel() * p.element_size() for p in ours.parameters())
    for width, height, frames in cases:
        case = f"{preset}@{width}x{height}x{frames}"
        if rec.over_budget(case):
            continue
        latents, timestep, context = dit_inputs(spec, width, height, frames, device, dtype)
        tokens = math.prod(ours.grid_of(latents.shape))
        run_ours = lambda: ours(latents, timestep, context)  # noqa: E731
        run_theirs = lambda: theirs(hidden_states=latents, timestep=timestep, encoder_hidden_states=context,  # noqa: E731
                                    return_dict=False)[0]
        reps = 1 if tokens > 40_000 else repeats
        best = {"ours": (float("inf"), 0), "diffusers": (float("inf"), 0)}
        outputs = {}
        with torch.no_grad():
            for attempt in range(reps + 1):  # alternating; the first of each is a warm-up
                for name, fn in (("ours", run_ours), ("diffusers", run_theirs)):
                    outputs.pop(name, None)
                    seconds, peak, outputs[name] = timed(fn, device)
                    if attempt:
                        best[name] = (min(best[name][0], seconds), max(best[name][1], peak or 0))
        difference = max_rel(outputs["ours"], outputs["diffusers"])
        if batch2:  # batched CFG: cond and uncond as one batch-2 forward, against two batch-1 forwards
            pair = (latents.repeat(2, 1, 1, 1, 1), timestep.repeat(2), context.repeat(2, 1, 1))
            outputs.clear()
            times = [timed(lambda: ours(*pair), device) for _ in range(reps + 1)][1:]
            extra = {"ours_batch2_s": min(t[0] for t in times), "ours_batch2_peak_gib": max(t[1] or 0 for t in times) / 2**30,
                     "batch2_vs_two_batch1": 2 * best["ours"][0] / min(t[0] for t in times)}
            del pair, times
        else:
            extra = {}
        matmul, attn = costs.forward_flops(spec.dit, query_tokens=tokens, seq_tokens=tokens)
        gpu = costs.H100
        predicted_s = matmul / gpu.gemm_flops + attn / gpu.attention_flops
        predicted_act = costs.dit_activation_bytes(spec.dit, tokens_per_rank=tokens, batch=1, seq_tokens=tokens)
        rec.write({"section": "dit", "case": case, "tokens": tokens, "dtype": str(dtype), "repeats": reps,
                   "weight_gib": round(weights / 2**30, 2),
                   "ours_s": best["ours"][0], "diffusers_s": best["diffusers"][0],
                   "speed_vs_diffusers": best["diffusers"][0] / best["ours"][0],
                   "ours_peak_gib": best["ours"][1] / 2**30, "diffusers_peak_gib": best["diffusers"][1] / 2**30,
                   "output_rel_diff": difference,
                   "ours_tflops": (matmul + attn) / best["ours"][0] / 1e12, "attention_share": attn / (matmul + attn),
                   "planner_predicted_s": predicted_s, "planner_predicted_act_gib": predicted_act / 2**30, **extra})
        del outputs, latents, context
    del ours, theirs
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------- VAE


def vae_section(rec: Recorder, case: str, device, dtype) -> None:
    preset, width, height, frames = parse_case(case)
    spec = get_preset(preset)
    torch.manual_seed(0)
    with torch.device(device):
        model = build_vae(spec.vae).to(dtype)
    vae = WanVAE(model, spec.vae)
    gen = torch.Generator(device=device).manual_seed(2)
    latents = torch.randn(1, *vae.latent_shape(frames, height, width), generator=gen, device=device)
    seconds, peak, video = timed(lambda: vae.decode(latents), device)
    base = spec.vae.decoder_base_dim or spec.vae.base_dim
    predicted_peak = costs.VAE_DECODE_BYTES_PER_PIXEL_CHANNEL * width * height * base
    predicted_s = costs.VAE_DECODE_FLOPS_PER_PIXEL[spec.vae.version] * width * height * frames / costs.H100.vae_flops
    rec.write({"section": "vae", "case": case, "version": spec.vae.version, "dtype": str(dtype),
               "decode_s_first_call": seconds, "peak_gib": (peak or 0) / 2**30,
               "planner_predicted_peak_gib_fp32": predicted_peak / 2**30,
               "planner_predicted_s_fp32": predicted_s, "finite": bool(torch.isfinite(video).all())})
    del model, vae, video
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("outputs/gpu"))
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    parser.add_argument("--dit", nargs="*", default=DEFAULT_DIT, help="preset@WxHxF forwards to time")
    parser.add_argument("--vae", nargs="*", default=DEFAULT_VAE, help="preset@WxHxF decodes to time")
    parser.add_argument("--attention", nargs="*", default=DEFAULT_ATTENTION, help="preset@TOKENS")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--batch2", action="store_true", help="also time our batch-2 (batched CFG) forward")
    parser.add_argument("--budget-s", type=float, default=420.0, help="skip what starts after this many seconds")
    args = parser.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    rec = Recorder(args.out, args.budget_s)
    rec.write(env_record(device))
    with torch.no_grad():
        for case in args.attention:
            if not rec.over_budget(case):
                attention_section(rec, case, device, dtype, args.repeats)
        by_preset: dict[str, list] = {}
        for case in args.dit:
            preset, *size = parse_case(case)
            by_preset.setdefault(preset, []).append(tuple(size))
        for preset, sizes in by_preset.items():
            if not rec.over_budget(preset):
                dit_section(rec, preset, sizes, device, dtype, args.repeats, args.batch2)
        for case in args.vae:
            if not rec.over_budget(case):
                vae_section(rec, case, device, dtype)
    rec.write({"section": "done"})


if __name__ == "__main__":
    main()
