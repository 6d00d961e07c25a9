"""LoRAs of a pipeline: reading files (any fsspec URL, cached), which expert takes which, and keeping the experts'
weights in step with what a request asks for.

A request's ``loras`` is a list of :class:`LoraSpec` (``path``, ``scale``, ``transformer``: ``high`` (default,
as diffusers and the hosted APIs), ``low`` or ``both``; a one-expert model treats ``high`` and ``both``
alike and has no ``low``). :class:`LoraAdapters` (one per pipeline) adds them to the adapters loaded the
diffusers way (``load_lora_weights`` / ``set_adapters``) and brings each expert to that set before a render:
nothing happens when the set is unchanged, else the previous set is taken off (unmerged exactly, or its
runtime branches dropped) and the new one applied (``models.lora_apply``). ``mode`` chooses how: ``runtime``
(default: the weights are never written, switching costs only moving the factors) or ``merged`` (no cost per
step; the touched parameters' originals are kept on the CPU for an exact unmerge).

Files are read with ``storage.objects.read_bytes`` (local paths and every fsspec URL), hashed (sha256: the
sidecar records it) and kept in a bounded LRU cache (:class:`LoraFiles`) beside the pipeline, so a warm
renderer reads each LoRA once.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch

from wan_dist.models.lora import LoraError, LoraWeights, lora_metadata, parse_lora
from wan_dist.models.lora_apply import clear_runtime_loras, merge_loras, set_runtime_loras, unmerge_loras

__all__ = ["LoraSpec", "LoraFile", "LoraFiles", "LoraAdapters", "TRANSFORMERS", "lora_specs", "expert_indices",
           "MODES"]

TRANSFORMERS = ("high", "low", "both")  # engine.request.LORA_TRANSFORMERS
MODES = ("runtime", "merged")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA of a request: where its file is, its strength, and which expert takes it."""

    path: str
    scale: float = 1.0
    transformer: str = "high"

    def to_dict(self) -> dict:
        return {"path": self.path, "scale": self.scale, "transformer": self.transformer}


def lora_specs(loras: Sequence[LoraSpec | Mapping[str, Any]] | None) -> list[LoraSpec]:
    """``loras`` (specs or their dicts, as a request holds them) as LoraSpecs, each checked as the request field
    is (``engine.request.lora_item``); ValueError naming ``loras[i]...``."""
    from wan_dist.engine.request import ItemError, lora_item

    specs = []
    for index, item in enumerate(loras or ()):
        if isinstance(item, LoraSpec):
            item = item.to_dict()
        try:
            specs.append(LoraSpec(**lora_item(index, item)))
        except ItemError as error:
            raise ValueError(f"loras{error.path}: {error}") from None
    return specs


def expert_indices(transformer: str, num_experts: int, *, field: str = "transformer") -> tuple[int, ...]:
    """Which experts (0 high-noise, 1 low-noise) take a LoRA for ``transformer``."""
    if transformer not in TRANSFORMERS:
        raise ValueError(f"{field}: must be one of {', '.join(TRANSFORMERS)}; got {transformer!r}")
    if num_experts == 1:
        if transformer == "low":
            raise ValueError(f"{field}: 'low' needs a two-expert model (A14B); this one has one expert")
        return (0,)
    return {"high": (0,), "low": (1,), "both": (0, 1)}[transformer]


@dataclass
class LoraFile:
    """A LoRA file as read: its tensors (CPU), safetensors header metadata, sha256 and size."""

    uri: str
    sha256: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    nbytes: int
    parsed: dict[Any, LoraWeights] = field(default_factory=dict, repr=False)  # per model signature

    @classmethod
    def from_bytes(cls, uri: str, data: bytes) -> "LoraFile":
        from safetensors.torch import load

        try:
            tensors = load(data)
            header_size = struct.unpack("<Q", data[:8])[0]
            metadata = json.loads(data[8:8 + header_size]).get("__metadata__") or {}
        except Exception as error:  # safetensors raises its own types for a truncated or foreign file
            raise LoraError(f"{uri} is not a readable safetensors file ({type(error).__name__}: {error})") from None
        return cls(uri=uri, sha256=hashlib.sha256(data).hexdigest(), tensors=tensors, metadata=metadata,
                   nbytes=len(data))

    @classmethod
    def from_state_dict(cls, state_dict: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None,
                        uri: str = "<state dict>") -> "LoraFile":
        """A state dict given in memory; its sha256 is over the sorted names, shapes, dtypes and bytes."""
        digest = hashlib.sha256()
        for name in sorted(state_dict):
            tensor = state_dict[name].detach().contiguous().cpu()
            digest.update(f"{name}|{list(tensor.shape)}|{tensor.dtype}|".encode())
            digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        tensors = dict(state_dict)
        return cls(uri=uri, sha256=digest.hexdigest(), tensors=tensors, metadata=dict(metadata or {}),
                   nbytes=sum(t.numel() * t.element_size() for t in tensors.values()))

    def weights_for(self, model: torch.nn.Module, *, image_branch: str = "error") -> LoraWeights:
        """This file parsed for ``model`` (cached per model shape signature)."""
        shapes = {name: param.shape for name, param in model.named_parameters()}
        key = (hash(tuple((n, tuple(s)) for n, s in shapes.items())), image_branch)
        if key not in self.parsed:
            self.parsed[key] = parse_lora(self.tensors, shapes, metadata=lora_metadata(self.metadata),
                                          image_branch=image_branch)
        return self.parsed[key]


class LoraFiles:
    """A bounded LRU cache of read LoRA files, keyed by URI: at most ``max_files`` and ``max_bytes`` (the
    newest file is always kept, whatever its size)."""

    def __init__(self, *, max_files: int = 16, max_bytes: int = 4 * 2**30, storage_options=None):
        self.max_files, self.max_bytes = max_files, max_bytes
        self.storage_options = storage_options
        self._files: OrderedDict[str, LoraFile] = OrderedDict()
        self.reads = 0  # files read from storage (the rest came from the cache)

    def get(self, uri: str, *, field: str = "lora", policy=None) -> LoraFile:
        """The file at ``uri``, read under ``policy`` (storage.fetch.read_source: None, the operator's rules;
        a FetchPolicy, a tenant's) unless cached."""
        if uri in self._files:
            self._files.move_to_end(uri)
            return self._files[uri]
        from wan_dist.storage.fetch import FetchRefused, read_source
        from wan_dist.storage.objects import StorageError

        try:
            data = read_source(uri, policy=policy, field=f"{field}.path", max_bytes=self.max_bytes,
                               storage_options=self.storage_options)
        except FetchRefused as error:
            raise LoraError(error.reason).named(f"{field}.path") from None
        except StorageError as error:
            raise LoraError(f"cannot read {uri} ({error})").named(f"{field}.path") from None
        self.reads += 1
        loaded = LoraFile.from_bytes(uri, data)
        self._files[uri] = loaded
        while len(self._files) > 1 and (len(self._files) > self.max_files
                                        or sum(f.nbytes for f in self._files.values()) > self.max_bytes):
            self._files.popitem(last=False)
        return loaded

    def __len__(self) -> int:
        return len(self._files)


@dataclass
class _Adapter:
    """An adapter loaded the diffusers way: its file and the experts it was loaded into."""

    file: LoraFile
    experts: set[int]


class LoraAdapters:
    """The LoRAs of one pipeline's experts (see the module docstring). ``experts``: the pipeline's list (high-noise
    first; an entry may be None where a disaggregated stage holds only the other expert)."""

    def __init__(self, owner, *, mode: str = "runtime", files: LoraFiles | None = None):
        self._owner = owner  # has .experts; read at each use: a disaggregated stage replaces the list
        experts = owner.experts
        self.mode = mode
        self.files = files or LoraFiles()
        self.adapters: dict[str, _Adapter] = {}
        self.active: dict[str, dict[int, float]] = {}  # adapter name -> {expert: weight}
        self._applied: list[tuple] = [() for _ in experts]  # per expert: ((sha256, strength), ...) in effect
        self._undo: list[Any] = [None for _ in experts]  # per expert: backups (merged) or True (runtime)

    @property
    def experts(self) -> list:
        return self._owner.experts

    @property
    def _policy(self):
        return getattr(self._owner, "fetch_policy", None)

    # -- diffusers' spelling -------------------------------------------------------------------------
    def load(self, source, *, adapter_name: str | None = None, expert: int = 0, image_branch: str = "error") -> str:
        """Load a LoRA (a path / URL or a state dict) into ``expert`` as adapter ``adapter_name`` (default
        ``default_<n>``, as diffusers names them) and make it active at weight 1. Returns the name."""
        if expert >= len(self.experts):
            raise ValueError("load_into_transformer_2: this model has one expert (no transformer_2)")
        file = (self.files.get(source, policy=self._policy) if isinstance(source, str)
                else LoraFile.from_state_dict(source))
        name = adapter_name or f"default_{len(self.adapters)}"
        adapter = self.adapters.setdefault(name, _Adapter(file=file, experts=set()))
        if adapter.file.sha256 != file.sha256:
            raise ValueError(f"adapter_name: {name!r} is already a different LoRA; choose another name")
        if self.experts[expert] is not None:
            file.weights_for(self.experts[expert], image_branch=image_branch)  # a bad LoRA fails here, not later
        adapter.experts.add(expert)
        self.active.setdefault(name, {})[expert] = 1.0
        return name

    def set_active(self, names: str | Sequence[str], weights=None) -> None:
        """diffusers' ``set_adapters``: only ``names`` are active, each at its weight (a number, or a dict with
        ``transformer`` / ``transformer_2``; default 1)."""
        names = [names] if isinstance(names, str) else list(names)
        weights = weights if isinstance(weights, (list, tuple)) else [weights] * len(names)
        if len(weights) != len(names):
            raise ValueError(f"adapter_weights: {len(weights)} weights for {len(names)} adapters")
        unknown = [n for n in names if n not in self.adapters]
        if unknown:
            raise ValueError(f"adapter_names: not loaded: {unknown}; loaded: {sorted(self.adapters)}")
        active: dict[str, dict[int, float]] = {}
        for name, weight in zip(names, weights):
            per = weight if isinstance(weight, Mapping) else {"transformer": weight, "transformer_2": weight}
            active[name] = {e: float(1.0 if per.get(k) is None else per[k])
                            for e, k in enumerate(("transformer", "transformer_2")) if e in self.adapters[name].experts}
        self.active = active

    def unload(self) -> None:
        """Forget every adapter and restore the base weights."""
        self.adapters.clear()
        self.active.clear()
        self.sync([])

    # -- per render ------------------------------------------------------------------------------------
    def sync(self, request_loras: Sequence[LoraSpec] = ()) -> list[dict]:
        """Bring every expert this process holds to the active adapters plus ``request_loras``; returns what
        each was (uri, sha256, scale, transformer, experts; ``adapter``: its name, for the adapters): the
        sidecar's record. Raises ValueError / LoraError naming ``loras[i]``."""
        wanted: list[list[tuple[LoraFile, float, str]]] = [[] for _ in self.experts]
        records = []
        for name, per in self.active.items():
            file = self.adapters[name].file
            for expert, weight in per.items():
                wanted[expert].append((file, weight, name))
                records.append({"uri": file.uri, "sha256": file.sha256, "scale": weight,
                                "transformer": ("high", "low")[expert], "experts": [expert], "adapter": name})
        for index, spec in enumerate(request_loras):
            field = f"loras[{index}]"
            experts = expert_indices(spec.transformer, len(self.experts), field=f"{field}.transformer")
            file = self.files.get(spec.path, field=field, policy=self._policy)
            for expert in experts:
                wanted[expert].append((file, spec.scale, field))
            records.append({"uri": spec.path, "sha256": file.sha256, "scale": spec.scale,
                            "transformer": spec.transformer, "experts": list(experts)})
        for expert, model in enumerate(self.experts):
            if model is not None:
                self._sync_expert(expert, model, wanted[expert])
        return records

    def _sync_expert(self, expert: int, model, wanted: list) -> None:
        key = tuple((file.sha256, strength) for file, strength, _ in wanted)
        if key == self._applied[expert]:  # () whenever nothing is applied
            return
        active = []
        for file, strength, field in wanted:
            try:
                active.append((file.weights_for(model), strength))
            except LoraError as error:
                raise error.named(field) from None
        self._take_off(expert, model)
        if self.mode == "merged":
            self._undo[expert] = merge_loras(model, active)
        elif self.mode == "runtime":
            set_runtime_loras(model, active)
            self._undo[expert] = True
        else:
            raise ValueError(f"lora_mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        self._applied[expert] = key

    def _take_off(self, expert: int, model) -> None:
        undo, self._undo[expert], self._applied[expert] = self._undo[expert], None, ()
        if isinstance(undo, dict):
            unmerge_loras(model, undo)
        elif undo is not None:
            clear_runtime_loras(model)

    def set_mode(self, mode: str) -> None:
        """Switch between ``runtime`` and ``merged``: what is applied is taken off (the next render re-applies)."""
        if mode not in MODES:
            raise ValueError(f"lora_mode: must be one of {', '.join(MODES)}, got {mode!r}")
        for expert, model in enumerate(self.experts):
            if model is not None:
                self._take_off(expert, model)
        self.mode = mode
