"""Worker processes of gymnasium's envs (``gymnasium-async:``) that cannot start say why in one error."""

from __future__ import annotations

from pathlib import Path

from helpers import run_script


def test_a_script_making_worker_envs_at_its_top_level_is_told_to_guard_it(tmp_path: Path) -> None:
    """A script that makes a ``gymnasium-async:`` env at its top level, without ``if __name__ == "__main__":``, has its
    workers re-run it as they start (forkserver or spawn), and they end: the script stops with a WorkerEndedError whose
    line names the guard, not gymnasium's ConnectionResetError from reading the spaces."""
    script = tmp_path / "unguarded.py"
    script.write_text(
        'from flipes.rl import make_vector_env\nmake_vector_env("gymnasium-async:CartPole-v1", 2, note=None, threads=2).close()\n'
    )
    r = run_script(script, check=False, timeout=120)
    prefix = "flipes.errors.WorkerEndedError: the env workers of CartPole-v1 ended as they started ("
    # the workers' tracebacks share the script's stderr, and may land inside its last line: found anywhere in a line
    said = [line[line.index(prefix) :] for line in r.stderr.splitlines() if prefix in line]
    assert r.returncode == 1 and said, (r.returncode, r.stderr[-3000:])
    assert 'needs that code under `if __name__ == "__main__":`' in said[-1]
