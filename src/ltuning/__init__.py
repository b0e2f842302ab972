"""L-Tuning: label-tuned prefix and prompt tuning of frozen transformers for text classification."""

__version__ = "0.1.0"

from .api import get_ltuning_model  # noqa: E402
from .backbones import Backbone  # noqa: E402
from .config import LTuningConfig  # noqa: E402
from .errors import AdapterError, ConfigError, DataError, LTuningError, UnsupportedModelError  # noqa: E402
from .loading import load_backbone  # noqa: E402
from .methods import METHODS  # noqa: E402
from .model import LTuningModel  # noqa: E402
from .recipe import TrainingRun, build_and_train  # noqa: E402

__all__ = [
    "METHODS", "AdapterError", "Backbone", "ConfigError", "DataError", "LTuningConfig", "LTuningError",
    "LTuningModel", "TrainingRun", "UnsupportedModelError", "__version__", "build_and_train", "get_ltuning_model",
    "load_backbone",
]
