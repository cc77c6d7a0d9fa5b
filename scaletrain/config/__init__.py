"""Configuration: dataclass schema, loading/merging, validation."""
from .load import config_from_dict, load_config, save_config, to_dict
from .schema import (AttackConfig, DataConfig, EngineConfig, EvalConfig, ExperimentConfig,
                     MethodConfig, ModelConfig, OptimConfig, StageConfig, TrackConfig, TrainConfig)

__all__ = [
    "load_config", "config_from_dict", "save_config", "to_dict", "ExperimentConfig", "DataConfig",
    "ModelConfig", "MethodConfig", "AttackConfig", "OptimConfig", "EngineConfig", "StageConfig",
    "TrainConfig", "EvalConfig", "TrackConfig",
]
