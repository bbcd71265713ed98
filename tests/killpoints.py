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

``python tests/killpoints.py --serve`` runs such commands in turn, one JSON request a line on its stdin
(see :func:`serve`), each in a process of its own forked from the server, which imported flipes once.
"""

from __future__ import annotations

import json
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


def generations(argv: list[str]) -> int:
    return int(argv[argv.index("--generations") + 1]) if "--generations" in argv else -1


def serve() -> None:
    """For each line of stdin, ``{"point": POINT or null, "argv": [...], "stdout": PATH, "stderr": PATH, "session": bool}``
    (optionally ``"env": {NAME: VALUE}`` and ``"path": [DIR]``, set in the process as a fresh one's environment and
    PYTHONPATH would set them): fork a process that runs ``flipes train ARGV`` with POINT installed (in a session and
    process group of its own where ``session``, as ``start_new_session`` starts one), its output to those files; write
    its pid, then its exit status once it has ended (-9: SIGKILL), a line each. The server imported what the command
    imports (flipes; torch._dynamo, which torch.optim's first optimizer imports, ~1.5 s of CPU; and EnvPool, the auto
    engine's for CartPole-v1), so each command starts past it (~3.5 s of CPU saved a start); each still runs in a process
    of its own, from what its run directory holds, and ends as a fresh one would."""
    import torch._dynamo  # noqa: F401

    import flipes.training  # noqa: F401
    from flipes.commands import main

    try:
        import envpool  # noqa: F401
    except ImportError:
        pass
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            if request.get("session"):
                os.setsid()
            os.environ.update(request.get("env", {}))  # before the command's processes start: they inherit it
            sys.path[:0] = request.get("path", [])  # as PYTHONPATH puts it: an env module's folder (forkserver too)
            os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
            for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
            if request["point"] is not None:
                install(request["point"], generations(request["argv"]))
            # raised out of serve(), never caught: the interpreter ends this process as it ends a fresh one (an
            # exception's traceback, SystemExit's message and status, atexit handlers, non-daemon threads joined)
            sys.exit(main(["train", *request["argv"]]))
        print(pid, flush=True)
        print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "--serve":
        serve()
        sys.exit(0)
    point, argv = sys.argv[1], sys.argv[2:]
    install(point, generations(argv))
    from flipes.commands import main

    sys.exit(main(["train", *argv]))
