"""A Ray Train user's script, as the tests run it: `TorchTrainer` with 2 CPU workers (Ray sets up the gloo
process group), the Recorder inside the training function, on a private local Ray cluster bound to 127.0.0.1.

    python tests/ray_train_worker.py OUT CASE [CASE ...]

The training function is tests/distributed_worker.py's `run` (the same cases, batches and outputs as under
torchrun), so the tests compare its OUT/<case>-rank<r>.parquet with one process on the whole batch.
"""
from __future__ import annotations

import os
import sys


def train_function(config: dict) -> None:
    import ray.train

    from distributed_worker import run  # tests/ is on the workers' PYTHONPATH

    context = ray.train.get_context()
    for case in config["cases"]:
        run(case, config["out"], context.get_world_rank(), context.get_world_size())


def main(out: str, cases: list[str]) -> None:
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")  # agents start slowly on busy CPUs
    os.environ.setdefault("RAY_agent_register_timeout_ms", "120000")
    ray.init(num_cpus=4, _node_ip_address="127.0.0.1", include_dashboard=False, log_to_driver=False)
    try:
        trainer = TorchTrainer(train_function, train_loop_config={"out": out, "cases": cases},
                               scaling_config=ScalingConfig(num_workers=2, use_gpu=False),
                               torch_config=TorchConfig(backend="gloo"),
                               run_config=RunConfig(storage_path=os.path.join(out, "ray"), name="resviz"))
        trainer.fit()
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
