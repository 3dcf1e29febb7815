"""Training one run: `TrainConfig` (config.py), `train()` (loop.py), what training needs of its run folder (the
config check, the finished result, resume: folder.py, over `resviz.runfolder`), the speed switches with their
guards (speed.py), and SIGINT/SIGTERM as a stop at the next step boundary (interrupts.py).

    from resviz.train import TrainConfig, train
    result = train(TrainConfig(dataset="digits", depth=20, steps=2_000), out="runs")
"""
from resviz.train.config import PAPER_MILESTONES, PAPER_STEPS, TrainConfig
from resviz.train.folder import RunResult
from resviz.train.loop import learning_rate, train

__all__ = ["PAPER_MILESTONES", "PAPER_STEPS", "RunResult", "TrainConfig", "learning_rate", "train"]
