"""`make bench`: run every bench/bench_*.py in turn; each writes bench/results/<name>.json + .md."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    only = set(argv)
    scripts = sorted(p for p in HERE.glob("bench_*.py") if not only or p.stem.removeprefix("bench_") in only)
    failed = []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        t0 = time.time()
        rc = subprocess.call([sys.executable, str(script)], cwd=HERE.parent)
        print(f"== {script.name}: exit {rc} in {time.time() - t0:.0f} s", flush=True)
        if rc != 0:
            failed.append(script.name)
    print(f"benchmarks run: {len(scripts)}; failed: {failed or 'none'}; results in bench/results/")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
