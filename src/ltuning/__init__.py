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


def pipeline(adapter, model=None, device=None, batch_size=None, trust_remote_code: bool = False):
    """The ``"ltuning-classification"`` transformers pipeline over an adapter folder or a loaded model (see
    :func:`ltuning.pipelines.pipeline`); imported on first use, since ``transformers.pipelines`` takes seconds
    to import."""
    from .pipelines import pipeline as make_pipeline

    return make_pipeline(adapter, model, device=device, batch_size=batch_size, trust_remote_code=trust_remote_code)


__all__ = [
    "METHODS", "AdapterError", "Backbone", "ConfigError", "DataError", "LTuningConfig", "LTuningError",
    "LTuningModel", "TrainingRun", "UnsupportedModelError", "__version__", "build_and_train", "get_ltuning_model",
    "load_backbone", "pipeline",
]
