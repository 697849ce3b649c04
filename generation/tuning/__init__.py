"""Tuning LoRA adapters on Muse's exports with TRL: `tune(TuneConfig(...))`.

`data` reads the export files and splits them by prompt, `plan` picks the method and its
hyper-parameters, `trainers` builds TRL's trainers, `output` writes the adapter folder
atomically and checks it when read back, `card` is its `muse.json`, `rules` the training
data rules that keep one member from writing a model.
"""

from generation.tuning.data import DataCounts, Split, SplitCounts, load_examples, split
from generation.tuning.errors import TuningError, TuningStopped
from generation.tuning.output import load_adapter_card
from generation.tuning.plan import Choice, HyperParams, choose_method, hyperparameters
from generation.tuning.rules import Rules, Screened, decide, screen_all
from generation.tuning.train import default_base_path, tune
from generation.tuning.types import ProgressEvent, TuneConfig, TuneResult

__all__ = [
    "Choice",
    "DataCounts",
    "HyperParams",
    "ProgressEvent",
    "Rules",
    "Screened",
    "Split",
    "SplitCounts",
    "TuneConfig",
    "TuneResult",
    "TuningError",
    "TuningStopped",
    "choose_method",
    "decide",
    "default_base_path",
    "hyperparameters",
    "load_adapter_card",
    "load_examples",
    "screen_all",
    "split",
    "tune",
]
