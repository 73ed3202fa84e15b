"""One training step of the gradient-RNN, every way, side by side: `python benchmarks/bench_gradrnn.py --help`.

The same as `innergrad bench` (options in innergrad/cli/bench.py, harness in innergrad/bench/harness.py).
"""

import sys

from innergrad.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
