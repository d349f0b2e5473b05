"""`make bench`: every benchmark, one after another, each in its own process.

Each bench_*.py runs rayworks and its baseline side by side in one run and prints
ratios (these machines are noisy: absolute times mean little). Nothing here asserts
on time. Run one alone with `python tests/bench/bench_<area>.py --help`.

    make bench                                   # all of them
    python tests/bench/run_all.py prep train     # some
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from procs import install, owned

HERE = Path(__file__).resolve().parent
ORDER = ["prep", "train", "serve", "generate", "embed", "index", "neardup", "eval"]


def main(argv: list[str]) -> int:
    names = argv or ORDER
    install()  # Ctrl-C or SIGTERM: the running benchmark's whole process tree is stopped, nothing stays
    failed = []
    for name in names:
        script = HERE / f"bench_{name}.py"
        print(f"\n===== bench {name}: {script.name} =====", flush=True)
        t0 = time.time()
        with owned([sys.executable, str(script)]) as proc:
            rc = proc.wait()
        print(f"===== bench {name}: exit {rc} after {time.time() - t0:.0f}s =====", flush=True)
        if rc != 0:
            failed.append(name)
    if failed:
        print(f"benchmarks that failed to run: {failed}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
