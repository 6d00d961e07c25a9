"""The training loop of one stage, the same on every worker of a Ray Train ``TorchTrainer`` (DDP).

A stage resumes from its newest checkpoint under ``<out>/ray/<stage>/`` (modules, optimizer, step and
loss history), whether Ray wrote it or a local run did, so a rerun with the same output folder continues
where the last one stopped. Rank 0 shows a tqdm bar (loss, ETA), writes checkpoints and the loss curve.
With ``ema_decay`` a checkpoint also holds the moving average of the weights (``ema``: the averager's state,
``ema_modules``: the averaged state dicts); :func:`trained_modules` gives what a run publishes.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

from wan_dist.config.train import OptimConfig
from wan_dist.train.plots import write_loss_curve
from wan_dist.train.stages import StepDraws

__all__ = ["latest_checkpoint", "run_steps", "trained_modules", "LocalSession", "RaySession", "STATE_FILE"]

STATE_FILE = "state.pt"
META_FILE = "meta.json"


def latest_checkpoint(root: Path) -> Path | None:
    """The checkpoint folder under ``root`` with the highest step (None when there is none)."""
    best, best_step = None, -1
    for meta in Path(root).rglob(META_FILE):
        if not (meta.parent / STATE_FILE).exists():
            continue  # a checkpoint still being copied
        step = int(json.loads(meta.read_text())["step"])
        if step > best_step:
            best, best_step = meta.parent, step
    return best


class LocalSession:
    """One process, no Ray: checkpoints go straight into ``root``, the newest ``keep`` of them stay."""

    rank, world_size = 0, 1

    def __init__(self, root: Path, keep: int = 2):
        self.root, self.keep = Path(root), int(keep)

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        return module

    def save(self, folder: Path, metrics: dict[str, float]) -> None:
        target = self.root / f"checkpoint_local_{metrics['step']:08d}"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(folder, target)
        older = sorted(self.root.glob("checkpoint_local_*"))[:-self.keep]  # zero-padded steps sort in order
        for stale in older:
            shutil.rmtree(stale)

    def report(self, metrics: dict[str, float]) -> None:
        pass


class RaySession:
    """Inside a Ray Train worker: DDP through ``prepare_model``, checkpoints through ``ray.train.report``."""

    def __init__(self):
        import ray.train

        context = ray.train.get_context()
        self.rank, self.world_size = context.get_world_rank(), context.get_world_size()

    def prepare(self, module: torch.nn.Module) -> torch.nn.Module:
        from ray.train.torch import prepare_model

        return prepare_model(module)

    def save(self, folder: Path, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(folder)))

    def report(self, metrics: dict[str, float]) -> None:
        import ray.train

        ray.train.report(metrics)  # every rank reports: a report is a collective in Ray Train


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def trained_modules(state: dict[str, Any]) -> dict[str, dict[str, torch.Tensor]]:
    """A checkpoint state's weights to publish: the moving average where the run kept one, else the weights."""
    return state.get("ema_modules") or state["modules"]


def _restore(resume: Path | None, modules: dict, optimizer: torch.optim.Optimizer) -> tuple[int, list, dict]:
    if resume is None:
        return 0, [], {}
    state = torch.load(resume / STATE_FILE, map_location="cpu", weights_only=False)
    for name, module in modules.items():
        if name not in state["modules"]:
            raise ValueError(f"resume: the checkpoint {resume} has no {name!r} weights: a run cannot change what it "
                             "trains midway (e.g. train_text); give it a new out folder")
        _unwrap(module).load_state_dict(state["modules"][name])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"]), list(state["history"]), state.get("ema") or {}


def _trained(module: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    """The parameters a stage trains (frozen ones, e.g. a decoder-only run's encoder, are not averaged)."""
    return [(name, p) for name, p in _unwrap(module).named_parameters() if p.requires_grad]


def _averagers(modules: dict, decay: float, saved: dict) -> dict:
    """One diffusers EMAModel per module (none when ``decay`` is 0), resumed from ``saved`` where it holds
    the module's, else starting from the module's current weights (a run that turns the average on later)."""
    if not decay:
        return {}
    from diffusers.training_utils import EMAModel

    averagers = {}
    for name, module in modules.items():
        averager = EMAModel([p for _, p in _trained(module)], decay=decay)
        if name in saved:
            averager.load_state_dict(saved[name])
        averagers[name] = averager
    return averagers


def _averaged_state(module: torch.nn.Module, averager) -> dict[str, torch.Tensor]:
    """The module's state dict with the averaged values of its trained parameters, under every key that
    names one (a tied parameter, as T5's shared embedding, appears under two)."""
    average = {id(p): shadow for (_, p), shadow in zip(_trained(module), averager.shadow_params)}
    return {key: average.get(id(value), value).detach().clone()
            for key, value in _unwrap(module).state_dict(keep_vars=True).items()}


def _checkpoint(session, stage_name: str, step: int, modules: dict, optimizer, history: list, plot: Path,
                averagers: dict) -> None:
    metrics = {"step": step, "loss": history[-1][1] if history else math.nan}
    with tempfile.TemporaryDirectory(prefix=f"{stage_name}-ckpt-") as tmp:
        folder = Path(tmp)
        if session.rank == 0:
            state = {"step": step, "optimizer": optimizer.state_dict(), "history": history,
                     "modules": {name: _unwrap(m).state_dict() for name, m in modules.items()}}
            if averagers:
                state["ema"] = {name: averager.state_dict() for name, averager in averagers.items()}
                state["ema_modules"] = {name: _averaged_state(modules[name], averager)
                                        for name, averager in averagers.items()}
            torch.save(state, folder / STATE_FILE)
            (folder / META_FILE).write_text(json.dumps({"step": step, "stage": stage_name}))
            write_loss_curve(history, plot, title=f"{stage_name} loss")
            session.save(folder, metrics)
        else:
            session.report(metrics)


def _learning_rate(optim: OptimConfig, step: int) -> float:
    return optim.lr * min(1.0, (step + 1) / optim.warmup_steps) if optim.warmup_steps else optim.lr


def run_steps(stage, session, *, optim: OptimConfig, seed: int, resume: Path | None, plot: Path,
              fixed_batch: bool = False, progress: bool = True,
              on_step: Callable[[int, float], None] | None = None) -> dict[str, Any]:
    """Train ``stage`` from its resumed step up to ``optim.steps``; returns {step, start_step, history, steps_per_s}.

    ``history``: [(step, loss, {metric: value})] of every step ever run (across resumes).
    """
    from tqdm import tqdm

    modules = {name: session.prepare(module) for name, module in stage.modules.items()}
    # every parameter, frozen ones too (AdamW skips those without a gradient): a run that freezes a part
    # (vae_decoder_only) resumes the optimizer state of one that trained it all, and the other way round
    params = [p for m in modules.values() for p in m.parameters()]
    optimizer = torch.optim.AdamW(params, lr=optim.lr, weight_decay=optim.weight_decay)
    step, history, saved_averages = _restore(resume, modules, optimizer)
    averagers = _averagers(modules, optim.ema_decay, saved_averages)
    bar = tqdm(total=optim.steps, initial=step, desc=stage.name, disable=not progress or session.rank != 0,
               mininterval=1.0, dynamic_ncols=True)
    started, first = time.perf_counter(), step
    while step < optim.steps:
        for group in optimizer.param_groups:
            group["lr"] = _learning_rate(optim, step)
        draws = StepDraws(seed=seed, step=step, rank=session.rank, fixed=fixed_batch)
        loss, metrics = stage.loss(modules, draws)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if optim.grad_clip:
            for module in modules.values():  # per module: one expert's gradients never scale another's
                torch.nn.utils.clip_grad_norm_(module.parameters(), optim.grad_clip)
        optimizer.step()
        for name, averager in averagers.items():
            averager.step([p for _, p in _trained(modules[name])])
        step += 1
        history.append((step, float(loss.detach()), metrics))
        bar.set_postfix(loss=f"{history[-1][1]:.4f}", refresh=False)
        bar.update(1)
        if on_step is not None:
            on_step(step, float(loss))
        if step % optim.checkpoint_every == 0 or step == optim.steps:
            _checkpoint(session, stage.name, step, modules, optimizer, history, plot, averagers)
    bar.close()
    elapsed = time.perf_counter() - started
    return {"step": step, "start_step": first, "history": history,
            "steps_per_s": (step - first) / elapsed if step > first and elapsed > 0 else 0.0}
