"""Training one run: `TrainConfig` (config.py), `train()` (loop.py), what training needs of its run folder (the
config check, the finished result, resume: folder.py, over `resviz.runfolder`), the speed switches with their
guards (speed.py), and SIGINT/SIGTERM as a stop at the next step boundary (interrupts.py).

    from resviz.train import TrainConfig, train
    result = train(TrainConfig(dataset="digits", depth=20, steps=2_000), out="runs")
"""
from resviz.train.config import COMPILE_MODES, PAPER_MILESTONES, PAPER_STEPS, TrainConfig, dataset_slug
from resviz.train.folder import RunResult, prepare_folder
from resviz.train.loop import learning_rate, train
from resviz.train.speed import (
    COMPILE_BACKEND_ENV,
    CUDAGRAPH_MODES,
    SYNC_DEBUG_ENV,
    compile_model,
    forward_backward,
    largest_batch,
)

__all__ = [
    "COMPILE_BACKEND_ENV",
    "COMPILE_MODES",
    "CUDAGRAPH_MODES",
    "PAPER_MILESTONES",
    "PAPER_STEPS",
    "SYNC_DEBUG_ENV",
    "RunResult",
    "TrainConfig",
    "compile_model",
    "dataset_slug",
    "forward_backward",
    "largest_batch",
    "learning_rate",
    "prepare_folder",
    "train",
]
