"""One training step of the gradient-RNN, every way, side by side: `python benchmarks/bench_gradrnn.py --help`.

A thin script over `innergrad bench` (innergrad/bench/harness.py); both take the same options.
"""

import sys

from innergrad.bench.harness import main

if __name__ == "__main__":
    sys.exit(main())
