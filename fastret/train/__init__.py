"""BioHiCL training: the LoRA loop (`train`, `TrainConfig`) and its losses. Imported explicitly
(`from fastret.train import TrainConfig, train`): it pulls in peft."""

from .loop import TrainConfig, train

__all__ = ["TrainConfig", "train"]
