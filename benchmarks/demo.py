"""Wall time of `resviz demo` (the README's `make demo`) on this machine, in a fresh temporary folder.

    python benchmarks/demo.py            # the real demo (target: <= 5 minutes on the 2-core CI machine)
    python benchmarks/demo.py --smoke    # the seconds-long version the test suite runs
"""
from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    from resviz.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        done = run_demo(os.path.join(tmp, "demo"), smoke=args.smoke, root=os.path.join(tmp, "data"),
                        progress=False)
        wall = time.perf_counter() - t0
    print(done["text"])
    print(f"\ndemo{' --smoke' if args.smoke else ''}: {wall:.1f} s wall on {platform.machine()} "
          f"({os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads); "
          f"{len(done['figures'])} figure files")


if __name__ == "__main__":
    main()
