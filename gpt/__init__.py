"""GPT: the model, its data pipeline and its training loop."""
import nn  # noqa: F401  (first: it warns when another project's tensorgrad shadows ours)
from .data import TokenData, prepare
from .model import GPT, GPTConfig
from . import reference_train  # noqa: F401  (gpt.reference_train: the loop in one screen)
from .train import TrainConfig, load_model, train

__all__ = ["GPT", "GPTConfig", "TokenData", "prepare", "TrainConfig", "train", "load_model"]
