"""Training runs on Ray Train (a front door beside batch and serve): the VAE and experts of the ``toy`` model
and of ``toy-i2v`` (image-to-video, conditioned on each clip's first frame as the pipeline conditions), and LoRAs
on any base model (``train_lora``, ``wan-dist train-lora``: wan_dist/train/lora.py).

``train(TrainConfig(...))`` or ``wan-dist train stage=vae|experts|all out=... steps=...``; see
wan_dist/train/run.py for the output folder and wan_dist/train/flow.py for the exact flow-matching recipe.
"""

from wan_dist.train.lora import LoraTrainResult, train_lora
from wan_dist.train.run import TrainResult, train

__all__ = ["train", "TrainResult", "train_lora", "LoraTrainResult"]
