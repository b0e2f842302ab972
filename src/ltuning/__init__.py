"""L-Tuning: label-tuned prefix and prompt tuning of frozen transformers for text classification."""

from ._version import __version__
from .api import get_ltuning_model
from .backbones import Backbone
from .config import LTuningConfig
from .errors import AdapterError, ConfigError, DataError, LTuningError, UnsupportedModelError
from .loading import load_backbone
from .methods import METHODS
from .model import LTuningModel
from .recipe import TrainingRun, build_and_train

__all__ = [
    "METHODS", "AdapterError", "Backbone", "ConfigError", "DataError", "LTuningConfig", "LTuningError",
    "LTuningModel", "TrainingRun", "UnsupportedModelError", "__version__", "build_and_train", "get_ltuning_model",
    "load_backbone",
]
