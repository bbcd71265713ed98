"""A test-side hook that ends a flipes process at a named point of its file writes, so tests can
check what a crash there leaves on disk. Usage (a subprocess)::

    python tests/killpoints.py POINT flipes-args...

Points: ``metrics-rewrite`` (SIGKILL before metrics.jsonl is replaced by its rewrite),
``between-renames`` (SIGKILL after previous.pt took the old checkpoint, before the new one is
renamed into checkpoint.pt), ``final-save`` (SIGTERM to itself as the final checkpoint is renamed
into place, then go on: the signal must wait until the writing is done), ``replace-K`` (SIGKILL before
the process's K-th file is renamed into place: K = 1, 2, ... walks through a run directory's setup),
``setup-sigterm`` (SIGTERM to itself as its first file, a new run directory's config.json, is renamed
into place, then go on: the setup must end whole).
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path


def install(point: str, generations: int) -> None:
    real_replace = os.replace
    calls = [0]

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        src_name, dst_name = Path(src).name, Path(dst).name
        calls[0] += 1
        if point == f"replace-{calls[0]}":
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "setup-sigterm" and calls[0] == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        if point == "metrics-rewrite" and dst_name == "metrics.jsonl":
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "between-renames" and dst_name == "checkpoint.pt" and (Path(dst).parent / "previous.pt").exists():
            os.kill(os.getpid(), signal.SIGKILL)
        if point == "final-save" and dst_name == "checkpoint.pt" and src_name.endswith(".tmp"):
            from flipes.checkpoint import load_checkpoint

            if load_checkpoint(src)["es"]["generation"] == generations:  # the final one
                os.kill(os.getpid(), signal.SIGTERM)
        real_replace(src, dst)

    os.replace = replace


if __name__ == "__main__":
    point, argv = sys.argv[1], sys.argv[2:]
    install(point, int(argv[argv.index("--generations") + 1]) if "--generations" in argv else -1)
    from flipes.commands import main

    sys.exit(main(["train", *argv]))
