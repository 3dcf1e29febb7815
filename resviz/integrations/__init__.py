"""Recording inside other trainers, and showing runs in other dashboards.

    resviz.integrations.lightning     RecorderCallback for lightning.pytorch.Trainer
    resviz.integrations.transformers  RecorderCallback for transformers.Trainer
    resviz.integrations.tensorboard   a run's table as TensorBoard scalars (a finished folder, or live);
                                      `resviz export-tb`
    resviz.integrations.wandb         a run's table and depth profiles in Weights & Biases (finished or live);
                                      `resviz export-wandb`

Each is an optional extra (`pip install resviz[lightning]`, `[hf]`, `[tensorboard]`, `[wandb]`); this package
imports none of them, so `import resviz.integrations` costs nothing. Import the submodule you use. The callbacks
write their run folders through `resviz.runfolder.RunFolder`, the writer `resviz train` uses.
"""
