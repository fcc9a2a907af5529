"""Training, ensembles and recalibration: the names other code imports, from the modules of serving/training/."""

from __future__ import annotations

from serving.training.config import DFDC_DATA, DFDC_LICENCE, SCHEDULES, TrainConfig
from serving.training.data import EXCLUDED_SPLITS, TrainingData, load_training_data, split_crops, validation_crops
from serving.training.ensemble import register_ensemble
from serving.training.pipeline import epoch_order, eval_dataset, predict_faces, training_batches
from serving.training.recalibrate import recalibrate
from serving.training.registration import TrainResult, model_metadata, register
from serving.training.run import run_dir, train
from serving.training.verdict import THRESHOLD_RULE, MeasureCrop, verdict_fields

__all__ = [
    "DFDC_DATA",
    "DFDC_LICENCE",
    "EXCLUDED_SPLITS",
    "SCHEDULES",
    "THRESHOLD_RULE",
    "MeasureCrop",
    "TrainConfig",
    "TrainResult",
    "TrainingData",
    "epoch_order",
    "eval_dataset",
    "load_training_data",
    "model_metadata",
    "predict_faces",
    "recalibrate",
    "register",
    "register_ensemble",
    "run_dir",
    "split_crops",
    "train",
    "training_batches",
    "validation_crops",
    "verdict_fields",
]
