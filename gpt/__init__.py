"""GPT: the model, its data pipeline and its training loop."""
from .data import TokenData, prepare
from .model import GPT, GPTConfig
from .train import TrainConfig, load_model, train

__all__ = ["GPT", "GPTConfig", "TokenData", "prepare", "TrainConfig", "train", "load_model"]
