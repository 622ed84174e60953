"""The headless core: no napari, no Qt, and Keras only when a model is built (``_backend``)."""

from __future__ import annotations

from ._backend import BackendError, backend_name, get_keras
from .batch import BatchResult, batch, batch_iter
from .bioimageio import export_bioimageio, load_bioimageio
from .dataset import (
    DatasetError,
    TrainingPair,
    TrainingSet,
    export_training_pairs,
    load_training_pairs,
    pairs_from_files,
)
from .evaluation import evaluate, evaluate_iter, threshold_sweep
from .interop import ExportError, OnnxSegmentationModel, export_czann, export_onnx
from .io import (
    Micrograph,
    MicrographError,
    MicrographWarning,
    as_micrograph,
    read_labels,
    read_micrograph,
    write_image,
    write_labels,
)
from .measure import (
    Measurement,
    ParticleFilter,
    density_table,
    granule_particles,
    measure_labels,
    measure_segmentation,
    tile_density_tables,
    write_seed_tables,
    z_disk_widths,
)
from .metrics import (
    EvaluationReport,
    ObjectMatch,
    evaluate_predictions,
    region_pixel_fractions,
)
from .models import (
    ModelCard,
    SegmentationModel,
    UntrainedModelWarning,
    WeightsError,
    build_granules_unet,
    build_locations_unet,
    default_model,
    load_model,
    save_model,
)
from .options import SegmentOptions
from .schema import (
    GRANULES_SCHEMA,
    LOCATIONS_SCHEMA,
    UNLABELLED,
    ClassInfo,
    ClassSchema,
    SchemaError,
)
from .segment import (
    SegmentationResult,
    SegmentProgress,
    segment_micrograph,
    segment_micrograph_iter,
)
from .stereology import (
    DiameterDistribution,
    StereologyParams,
    analytical_vf,
    calibrate_baskets,
    numerical_density,
    vf_from_pf,
    vf_to_concentration,
)
from .study import (
    StudyError,
    design_from_paths,
    hierarchical_bootstrap,
    read_study_design,
    run_study,
    summarise_study,
)
from .synthetic import SyntheticMicrograph, sample_micrograph, synthetic_micrograph
from .tiling import TilePlan, split_seed
from .train import TrainConfig, TrainingError, TrainProgress, TrainResult, train, train_iter

USER_ERRORS: tuple[type[BaseException], ...] = (
    MicrographError, WeightsError, SchemaError, BackendError, DatasetError, TrainingError, ValueError,
    FileExistsError,
)
"""Exceptions caused by the user's input: shown as a message, never as a traceback."""

__all__ = [
    "BackendError", "backend_name", "get_keras",
    "BatchResult", "batch", "batch_iter",
    "Micrograph", "MicrographError", "MicrographWarning", "as_micrograph", "read_labels",
    "read_micrograph", "write_image", "write_labels",
    "ModelCard", "SegmentationModel", "UntrainedModelWarning", "WeightsError",
    "export_bioimageio", "load_bioimageio",
    "build_granules_unet", "build_locations_unet", "default_model", "load_model", "save_model",
    "GRANULES_SCHEMA", "LOCATIONS_SCHEMA", "UNLABELLED", "ClassInfo", "ClassSchema", "SchemaError",
    "SegmentOptions", "SegmentationResult", "SegmentProgress", "segment_micrograph",
    "segment_micrograph_iter",
    "SyntheticMicrograph", "sample_micrograph", "synthetic_micrograph",
    "TilePlan", "split_seed", "USER_ERRORS",
    "DatasetError", "TrainingPair", "TrainingSet", "export_training_pairs", "load_training_pairs",
    "pairs_from_files",
    "EvaluationReport", "ObjectMatch", "evaluate", "evaluate_iter", "evaluate_predictions",
    "region_pixel_fractions", "threshold_sweep",
    "Measurement", "ParticleFilter", "density_table", "granule_particles", "measure_labels",
    "measure_segmentation", "tile_density_tables", "write_seed_tables", "z_disk_widths",
    "DiameterDistribution", "StereologyParams", "analytical_vf", "calibrate_baskets",
    "numerical_density", "vf_from_pf", "vf_to_concentration",
    "StudyError", "design_from_paths", "hierarchical_bootstrap", "read_study_design", "run_study",
    "summarise_study",
    "TrainConfig", "TrainingError", "TrainProgress", "TrainResult", "train", "train_iter",
    "ExportError", "OnnxSegmentationModel", "export_czann", "export_onnx",
]
