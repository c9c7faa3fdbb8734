"""Wall time of each `dvc repro` stage, read from its output: `make run 2>&1 | python scripts/stage_times.py`.

Echoes every line as it comes, then prints each stage's minutes (from its "Running stage" line to the next stage's,
or to the end) and the total, as the run-time tables of docs/results.md give them. Process start, imports and
MLflow/Prefect bookkeeping count, as they do for a user waiting on `make run`.
"""

import re
import sys
import time

STAGE = re.compile(r"^Running stage '([^']+)'")


def main() -> None:
    began = time.monotonic()
    marks: list[tuple[str, float]] = []
    for line in sys.stdin:
        sys.stdout.write(line)
        sys.stdout.flush()
        found = STAGE.match(line)
        if found:
            marks.append((found.group(1), time.monotonic()))
    end = time.monotonic()
    print("\nstage times (min):")
    for (stage, start), (_, stop) in zip(marks, [*marks[1:], ("", end)]):
        print(f"  {stage:24s} {(stop - start) / 60:6.1f}")
    print(f"  {'total':24s} {(end - began) / 60:6.1f}")


if __name__ == "__main__":
    main()
