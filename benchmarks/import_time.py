"""`import innergrad` against `import torch`, each in fresh interpreters, alternated, in one run.

    python benchmarks/import_time.py            # 7 rounds
    python benchmarks/import_time.py --rounds 15

Prints the median wall time of each import (interpreter start included, the same for both), the
ratio (the target: at most 1.25), and what innergrad adds on top of torch according to
`python -X importtime` (its own modules and anything else it loads that torch does not).
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import time


def _wall(module: str) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", f"import {module}"], check=True)
    return time.perf_counter() - t0


def _importtime(module: str) -> dict[str, int]:
    """Module -> its own import time in microseconds, from `python -X importtime`."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", f"import {module}"], check=True,
                         capture_output=True, text=True).stderr
    own = {}
    for m in re.finditer(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", err):
        own[m.group(2)] = int(m.group(1))
    return own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    times: dict[str, list[float]] = {"torch": [], "innergrad": []}
    _wall("innergrad")  # warm the file cache for both
    for _ in range(args.rounds):
        for module in times:
            times[module].append(_wall(module))
    med = {m: statistics.median(v) for m, v in times.items()}
    print(f"import torch      {med['torch']:.3f} s  (median of {args.rounds}; min {min(times['torch']):.3f})")
    print(f"import innergrad  {med['innergrad']:.3f} s  (median of {args.rounds}; min {min(times['innergrad']):.3f})")
    print(f"ratio             {med['innergrad'] / med['torch']:.2f}  (target <= 1.25)")
    base, ours = _importtime("torch"), _importtime("innergrad")
    extra = {m: us for m, us in ours.items() if m not in base}
    print(f"added by innergrad (-X importtime, own time): {sum(extra.values()) / 1e3:.0f} ms in {len(extra)} modules")
    for m, us in sorted(extra.items(), key=lambda kv: -kv[1])[:8]:
        print(f"  {us / 1e3:8.1f} ms  {m}")


if __name__ == "__main__":
    main()
