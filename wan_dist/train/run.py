"""``train(config)``: the stages of a run, each on a Ray Train ``TorchTrainer`` (or in-process with
``local=True``), then the published checkpoint at ``<out>/model`` that ``load_pipeline`` loads.

Presets ``toy`` (T2V) and ``toy-i2v`` (I2V-A14B style: the experts also see each clip's first frame, encoded
and masked as the pipeline conditions on an image). Layout of the output folder::

    <out>/run.json     the run's preset (one folder holds one model's run)
    <out>/data/        clips (npz); latents, text embeddings and I2V condition latents (safetensors), cached once
    <out>/ray/<stage>/ Ray Train's storage: the stage's checkpoints (resume point)
    <out>/vae/         the trained VAE (diffusers format, measured latent statistics in its config), or the
                       one ``vae_from`` names, copied
    <out>/<stage>_loss.png, <out>/<stage>_summary.json
    <out>/model/       the published checkpoint (diffusers layout)
"""

from __future__ import annotations

import filecmp
import json
import os
import shutil
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wan_dist.config.train import TrainConfig, train_config_from_dict
from wan_dist.models.presets import VariantSpec, get_preset
from wan_dist.train.data import (cached_clips, cached_latents, clips_path, folder_digest, latents_path, to_video,
                                 tokenizer_corpus)
from wan_dist.train.loop import STATE_FILE, LocalSession, RaySession, latest_checkpoint, run_steps, trained_modules
from wan_dist.train.stages import ENCODER_PARTS, ExpertStage, VAEStage

__all__ = ["train", "TrainResult", "text_encoder_for", "run_workers"]

_TEXT_SEED_OFFSET = 200  # the text encoder is frozen random: seed + 200, as make_checkpoint seeds it


@dataclass(frozen=True, kw_only=True)
class TrainResult:
    out: Path
    model: Path | None  # the published checkpoint, once the experts are trained
    summaries: dict[str, dict[str, Any]]


def _build_stage(kind: str, config: TrainConfig, spec: VariantSpec, data_path: str):
    if kind == "vae":
        with np.load(data_path) as archive:
            clips = archive["clips"]
        return VAEStage(spec, clips=clips, optim=config.vae, seed=config.seed, frames=config.vae_frames, crop=config.vae_crop,
                        sample_posterior=config.vae_sample_posterior, decoder_only=config.vae_decoder_only,
                        init=Path(config.vae_init) if config.vae_init else None)
    from safetensors.torch import load_file

    return ExpertStage(spec, tensors=load_file(data_path), optim=config.experts, flow_config=config.flow,
                       seed=config.seed, text=_caption_tokens(config, spec) if config.train_text else None)


def _caption_tokens(config: TrainConfig, spec: VariantSpec):
    """train_text: the run's text encoder (frozen random until now) and its training captions, tokenised."""
    from wan_dist.train.stages import CaptionTokens

    out = Path(config.out)
    _, captions = cached_clips(out, config.data, spec, split="train")
    encoder = text_encoder_for(spec, tokenizer_corpus(captions), out / "data" / "tokenizer", seed=config.seed)
    input_ids, mask = encoder.tokenize(list(captions))
    empty_ids, empty_mask = encoder.tokenize([""])
    return CaptionTokens(encoder=encoder.model, input_ids=input_ids, mask=mask, empty_ids=empty_ids,
                         empty_mask=empty_mask)


def _stage_steps(kind: str, config: TrainConfig, session, data_path: str, resume: Path | None) -> dict:
    torch.set_num_threads(config.threads_per_worker)
    spec = get_preset(config.preset)
    stage = _build_stage(kind, config, spec, data_path)
    optim = config.vae if kind == "vae" else config.experts
    out = Path(config.out)
    result = run_steps(stage, session, optim=optim, seed=config.seed, resume=resume, plot=out / f"{kind}_loss.png",
                       fixed_batch=config.data.fixed_batch, progress=config.progress)
    if session.rank == 0:
        summary = {"step": result["step"], "start_step": result["start_step"], "steps_per_s": result["steps_per_s"],
                   "first_loss": result["history"][0][1] if result["history"] else None,
                   "last_loss": result["history"][-1][1] if result["history"] else None}
        (out / f"{kind}_summary.json").write_text(json.dumps(summary, indent=2))
    return result


def _ray_worker(payload: dict) -> None:
    """Ray Train's per-worker function: resume from Ray's own checkpoint of this run when it has one
    (a restarted worker group), else from the newest one in the output folder."""
    import ray.train

    config = train_config_from_dict(payload["config"])
    resume = Path(payload["resume"]) if payload["resume"] else None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            _stage_steps(payload["kind"], config, RaySession(), payload["data"], Path(folder))
        return
    _stage_steps(payload["kind"], config, RaySession(), payload["data"], resume)


def run_workers(kind: str, config, payload: dict, *, local: bool, run_local, ray_worker) -> None:
    """Run a stage's steps, resuming from its newest checkpoint under ``<out>/ray/<kind>``: in this process
    (``run_local(session, resume)``) or on a Ray Train ``TorchTrainer`` of ``config.num_workers`` workers, each
    calling ``ray_worker(payload + {"resume": ...})``. ``config``: a TrainConfig or LoraTrainConfig (their
    shared WorkerConfig sizes the workers)."""
    out = Path(config.out)
    root = out / "ray" / kind
    resume = latest_checkpoint(root)
    if local:
        root.mkdir(parents=True, exist_ok=True)
        run_local(LocalSession(root, keep=config.keep_checkpoints), resume)
        return
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    trainer = TorchTrainer(
        ray_worker, train_loop_config={**payload, "resume": str(resume) if resume else None},
        scaling_config=ScalingConfig(num_workers=config.num_workers, use_gpu=config.use_gpu,
                                     resources_per_worker={"CPU": config.cpus_per_worker}),
        run_config=RunConfig(name=kind, storage_path=str(out / "ray"),
                             checkpoint_config=CheckpointConfig(num_to_keep=config.keep_checkpoints)))
    trainer.fit()  # raises TrainingFailedError naming the worker's exception


def _run_stage(kind: str, config: TrainConfig, data_path: str, *, local: bool) -> dict:
    run_workers(kind, config, {"kind": kind, "config": asdict(config), "data": data_path}, local=local,
                run_local=lambda session, resume: _stage_steps(kind, config, session, data_path, resume),
                ray_worker=_ray_worker)
    return json.loads((Path(config.out) / f"{kind}_summary.json").read_text())


def text_encoder_for(spec: VariantSpec, corpus: tuple[str, ...], folder: Path, *, seed: int):
    """The frozen, deterministic text encoder of a run with its caption tokenizer (built in ``folder``)."""
    from wan_dist.models.text_encoder import TextEncoder, build_text_encoder
    from wan_dist.models.tokenizer import build_tokenizer, load_tokenizer

    if not (folder / "tokenizer_config.json").exists():
        build_tokenizer(str(folder), vocab_size=spec.text_encoder.vocab_size, corpus=corpus)
    torch.manual_seed(seed + _TEXT_SEED_OFFSET)
    model = build_text_encoder(spec.text_encoder)
    return TextEncoder(model, load_tokenizer(folder), text_len=spec.dit.text_len)


@torch.no_grad()
def _finish_vae(config: TrainConfig, spec: VariantSpec) -> dict:
    """Trained VAE -> measured latent statistics (vae_init's, decoder only) -> ``<out>/vae``; held-out PSNR into
    the summary."""
    from wan_dist.models.vae import WanVAE, build_vae

    out = Path(config.out)
    state = torch.load(latest_checkpoint(out / "ray" / "vae") / STATE_FILE, map_location="cpu", weights_only=False)
    model = build_vae(spec.vae)
    model.load_state_dict(trained_modules(state)["vae"])
    if config.vae_decoder_only and config.vae_init:
        # the encoder is vae_init's: so are the latents, and the statistics experts trained on them use
        from wan_dist.models.vae import vae_config_from_diffusers

        init = vae_config_from_diffusers(Path(config.vae_init))
        vae_config = replace(spec.vae, latents_mean=init.latents_mean, latents_std=init.latents_std)
    else:
        clips, _ = cached_clips(out, config.data, spec, split="train")
        mu = torch.cat([model.encode(to_video(clips[i:i + 4])).latent_dist.mode()
                        for i in range(0, min(len(clips), 64), 4)])
        mean = mu.transpose(0, 1).flatten(1).mean(1)
        std = mu.transpose(0, 1).flatten(1).std(1).clamp_min(1e-3)
        vae_config = replace(spec.vae, latents_mean=tuple(mean.tolist()), latents_std=tuple(std.tolist()))
    model.register_to_config(latents_mean=list(vae_config.latents_mean), latents_std=list(vae_config.latents_std))
    model.save_pretrained(str(out / "vae"), safe_serialization=True)
    summary = json.loads((out / "vae_summary.json").read_text())
    heldout, _ = cached_clips(out, config.data, spec, split="heldout")
    if len(heldout):
        vae = WanVAE(model, vae_config)
        video = to_video(heldout)
        recon = torch.cat([vae.decode(vae.encode(video[i:i + 2])) for i in range(0, len(video), 2)])
        mse = ((recon - video) / 2).pow(2).mean().clamp_min(1e-12)
        summary["heldout_psnr_db"] = float(10 * torch.log10(1 / mse))
    (out / "vae_summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def _trained_vae(out: Path):
    from diffusers import AutoencoderKLWan

    from wan_dist.models.vae import WanVAE, vae_config_from_diffusers

    if not (out / "vae" / "config.json").exists():
        raise ValueError(f"stage: experts need a trained VAE at {out / 'vae'}; run stage=vae (or all) first, "
                         "or give vae_from=<a trained vae folder>")
    config = vae_config_from_diffusers(out / "vae")
    model = AutoencoderKLWan.from_pretrained(str(out / "vae")).float().eval().requires_grad_(False)
    return WanVAE(model, config)


def _experts_data(config: TrainConfig, spec: VariantSpec) -> tuple[str, Any, tuple[str, ...]]:
    out = Path(config.out)
    vae = _trained_vae(out)
    clips, captions = cached_clips(out, config.data, spec, split="train")
    corpus = tokenizer_corpus(captions)
    encoder = text_encoder_for(spec, corpus, out / "data" / "tokenizer", seed=config.seed)
    # the latents depend on the encoder only: a decoder fine-tuned later (vae_decoder_only) keeps this cache
    vae_digest = sum(float(p.double().sum()) for part in ENCODER_PARTS for p in getattr(vae.model, part).parameters())
    key = {"vae": vae_digest, "stats": list(vae.config.latents_mean), "text_seed": config.seed,
           "tokenizer": folder_digest(out / "data" / "tokenizer"), "clips": [len(clips), *clips.shape[1:]],
           "data": asdict(config.data)}
    image_condition = spec.task == "i2v"
    cached_latents(out, key=key, vae=vae, text_encoder=encoder, clips=clips, captions=captions,
                   image_condition=image_condition)
    return str(latents_path(out, key, image_condition=image_condition)), (vae, encoder), corpus


def _publish(config: TrainConfig, spec: VariantSpec, vae, encoder, corpus) -> Path:
    from wan_dist.models.make_checkpoint import TrainedParts, write_checkpoint

    out = Path(config.out)
    state = torch.load(latest_checkpoint(out / "ray" / "experts") / STATE_FILE, map_location="cpu",
                       weights_only=False)
    trained = trained_modules(state)
    experts = tuple(trained[f"expert{e}"] for e in range(2 if spec.two_experts else 1))
    if "text_encoder" in trained:  # train_text: the encoder the experts learned with
        encoder.model.load_state_dict(trained["text_encoder"])
    parts = TrainedParts(experts=experts, vae=vae.model, text_encoder=encoder.model, tokenizer_corpus=corpus)
    return write_checkpoint(replace(spec, vae=vae.config), out / "model", parts, layout="diffusers")


def _claim_folder(out: Path, spec: VariantSpec) -> None:
    """Record the run's preset in ``<out>/run.json``; refuse a folder of another preset's run, whose expert
    checkpoints and published model an I2V run (36 input channels) must not resume from or replace."""
    if spec.task not in ("t2v", "i2v"):
        raise ValueError(f"preset: {spec.name} is a {spec.task} model; the trainer knows t2v and i2v presets")
    marker = out / "run.json"
    if marker.exists():
        theirs = json.loads(marker.read_text()).get("preset")
        if theirs != spec.name:
            raise ValueError(f"out: {out} holds a {theirs!r} run, not {spec.name!r}; give this run its own folder "
                             f"(vae_from={out / 'vae'} reuses that run's VAE)")
        return
    marker.write_text(json.dumps({"preset": spec.name}))


def _same_files(a: Path, b: Path) -> bool:
    names = sorted(p.name for p in a.iterdir() if p.is_file())
    return names == sorted(p.name for p in b.iterdir() if p.is_file()) and all(
        filecmp.cmp(a / name, b / name, shallow=False) for name in names)


def vae_folder(path: str | Path, spec: VariantSpec, *, field: str) -> Path:
    """The diffusers VAE folder ``path`` names (itself, or the ``vae/`` of a checkpoint or run folder), checked
    to hold ``spec``'s VAE architecture; errors name ``field``."""
    from wan_dist.models.vae import vae_config_from_diffusers

    source = Path(path)
    if not (source / "config.json").exists() and (source / "vae" / "config.json").exists():
        source = source / "vae"  # a checkpoint (diffusers layout) or a run folder
    if not (source / "config.json").exists():
        raise ValueError(f"{field}: {source} holds no diffusers VAE (config.json); give a run's <out>/vae folder")
    theirs = vae_config_from_diffusers(source)
    differ = [f"{f.name} {getattr(theirs, f.name)!r} (needs {getattr(spec.vae, f.name)!r})"
              for f in fields(spec.vae) if f.name not in ("latents_mean", "latents_std")
              and getattr(theirs, f.name) != getattr(spec.vae, f.name)]
    if differ:
        raise ValueError(f"{field}: the VAE in {source} is not {spec.name}'s architecture: {', '.join(differ)}")
    return source


def _adopt_vae(config: TrainConfig, spec: VariantSpec) -> dict[str, Any]:
    """Copy the trained VAE ``config.vae_from`` names into ``<out>/vae`` (see TrainConfig.vae_from)."""
    source = vae_folder(config.vae_from, spec, field="vae_from")
    target = Path(config.out) / "vae"
    if target.exists():
        if not _same_files(source, target):
            raise ValueError(f"vae_from: {target} already holds another VAE; remove it or drop vae_from")
    else:
        staging = target.with_name(".vae-staging")
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(source, staging)
        staging.rename(target)  # a reader never sees half a VAE
    return {"vae_from": str(source)}


def train(config: TrainConfig, *, local: bool = False) -> TrainResult:
    """Run ``config.stage`` ("vae", "experts" or "all") into ``config.out``, resuming what is there.

    ``local=True`` runs each stage in this process (no Ray) with the same loop and checkpoints; otherwise
    Ray must be initialised (the CLI joins ``RAY_ADDRESS`` or starts a local one). With ``config.vae_from``
    the VAE is copied from there instead of trained.
    """
    spec = get_preset(config.preset)
    # vae_init resolved to its checked VAE folder once, here: a bad folder fails before any data is made
    config = replace(config, out=os.path.abspath(config.out),
                     vae_from=os.path.abspath(config.vae_from) if config.vae_from else None,
                     vae_init=str(vae_folder(os.path.abspath(config.vae_init), spec, field="vae_init"))
                     if config.vae_init else None)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    _claim_folder(out, spec)
    summaries: dict[str, dict[str, Any]] = {}
    model = None
    if config.vae_from:
        summaries["vae"] = _adopt_vae(config, spec)
    elif config.stage in ("vae", "all"):
        cached_clips(out, config.data, spec, split="train")
        cached_clips(out, config.data, spec, split="heldout")
        _run_stage("vae", config, str(clips_path(out, config.data, spec, split="train")), local=local)
        summaries["vae"] = _finish_vae(config, spec)
    if config.stage in ("experts", "all"):
        data_path, (vae, encoder), corpus = _experts_data(config, spec)
        summaries["experts"] = _run_stage("experts", config, data_path, local=local)
        model = _publish(config, spec, vae, encoder, corpus)
    return TrainResult(out=out, model=model, summaries=summaries)
