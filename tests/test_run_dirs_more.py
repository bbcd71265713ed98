"""What a run directory's files hold after the ways a long run is resumed, overwritten, evaluated and interrupted:
another run's checkpoint resumed inside it, its logs replaced, its config.json damaged, rows and checkpoints in
the order a crash can leave them."""

from __future__ import annotations

import io
import shutil
import threading
import types
from pathlib import Path

import pytest
import torch
from helpers import FAST_KW

import flipes
from flipes.errors import UsageError


def _full_disk_at(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that is full when flipes' file writer (``write_atomic``) opens the file ``name``: the OS's ENOSPC."""
    import errno
    import os

    import flipes.callbacks as callbacks

    def full_open(file: Path, mode: str = "r", encoding: str | None = None) -> io.TextIOWrapper:
        if Path(file).name == name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return open(file, mode, encoding=encoding)

    monkeypatch.setattr(callbacks, "open", full_open, raising=False)


def _full_disk_renaming(suffix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk that is full when a written file is renamed over one whose name ends with ``suffix``: the OS's ENOSPC."""
    import errno
    import os

    real_replace = os.replace

    def full(src: object, dst: object) -> None:
        if str(dst).endswith(suffix):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)


def _files(run: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(run.iterdir()) if p.is_file() and p.name != ".lock"}


def test_another_runs_checkpoint_resumed_inside_a_run_directory_is_refused_and_the_run_kept(tmp_path: Path) -> None:
    """A checkpoint of a run of other options (--hidden 8) copied into another run's directory (--hidden 16) and
    resumed there is refused before anything is written, naming the option that differs and how to continue it, and
    every file of the run in that directory stays byte for byte; a copy of the run's own checkpoint under another
    name resumes there."""
    small, wide = tmp_path / "small", tmp_path / "wide"
    flipes.train(**FAST_KW, generations=1, hidden=[8], out=str(small))
    flipes.train(**FAST_KW, generations=1, hidden=[16], out=str(wide))
    shutil.copyfile(small / "checkpoint.pt", wide / "from_small.pt")
    before = _files(wide)
    for options in ({"hidden": [8]}, {}):  # its options given again, or the directory's taken
        with pytest.raises(
            UsageError,
            match=r"from_small.pt is not a checkpoint of the run in .*--hidden: \[8\] in the file, "
            r"\[16\] in the run\): resumed there, it would replace that run; move it into a directory",
        ):
            flipes.train(**FAST_KW, generations=2, resume=str(wide / "from_small.pt"), **options)
        assert _files(wide) == before
    shutil.copyfile(wide / "checkpoint.pt", wide / "backup.pt")
    result = flipes.train(**FAST_KW, generations=2, resume=str(wide / "backup.pt"))
    assert [row["generation"] for row in flipes.read_metrics(wide)] == [0, 1] and result.run_dir == wide


def test_every_checkpoint_best_pt_too_is_written_after_the_rows_it_covers_are_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before each checkpoint.pt and best.pt is written, metrics.jsonl is fsynced holding a row of every generation
    the checkpoint holds: a crash of the machine cannot keep a best.pt (which --resume is offered where checkpoint.pt
    is damaged) whose rows are lost."""
    import flipes.callbacks as callbacks

    run, events = tmp_path / "run", []
    real_sync, real_save = callbacks.sync_file, callbacks.save_checkpoint

    def sync(path: Path) -> None:
        real_sync(path)
        events.append(("synced", len(Path(path).read_text().splitlines())))

    def save(state: dict, path: Path, **kwargs: object) -> Path:
        events.append((Path(path).name, state["es"]["generation"]))
        return real_save(state, path, **kwargs)

    monkeypatch.setattr(callbacks, "sync_file", sync)
    monkeypatch.setattr(callbacks, "save_checkpoint", save)
    flipes.train(**FAST_KW, generations=3, eval_every=1, checkpoint_every=100, out=str(run))
    saves = [i for i, (name, _) in enumerate(events) if name != "synced"]
    assert [events[i][0] for i in saves].count("best.pt") >= 1, events
    for i in saves:
        assert events[i - 1] == ("synced", events[i][1]), events  # synced holding the rows of generations 0..g-1


class _Locked(torch.nn.Module):
    """A policy holding a lock, which copy.deepcopy cannot copy: load_policy loads a checkpoint into it in place."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(4, hidden), torch.nn.Tanh(), torch.nn.Linear(hidden, 1))
        self.lock = threading.Lock()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_a_model_of_other_shapes_is_refused_before_any_of_its_parameters_is_loaded(tmp_path: Path) -> None:
    """load_policy given a module of another width that it must load in place (it cannot be copied) refuses it naming
    the first mismatching key with both shapes and how many more, and leaves every parameter of the module exactly as
    it was (torch's load copies the ones that fit, here the last bias, before it raises)."""

    def fitness(model: torch.nn.Module, pop: object) -> torch.Tensor:
        return -((model(torch.ones(pop.size, 4)).squeeze(-1) - 1) ** 2)

    run = tmp_path / "run"
    flipes.train(env="none", model=lambda env: _Locked(8), fitness=fitness, popsize=8, generations=1, out=str(run),
                 tensorboard=False, plot=False, progress=False)  # fmt: skip
    wider = _Locked(16)
    before = {k: v.clone() for k, v in wider.state_dict().items()}
    with pytest.warns(UserWarning, match="cannot be copied"), pytest.raises(UsageError) as e:
        flipes.load_policy(run, model=wider)
    assert str(e.value) == (
        f"--checkpoint: latest of {run} holds parameters of another model than the one given (size mismatch for "
        "net.0.weight: (8, 4) saved, (16, 4) in the model; and 2 more); give model= the model the run was trained with"
    )
    assert all(torch.equal(v, before[k]) for k, v in wider.state_dict().items())


def test_overwrite_says_in_one_line_which_files_and_logs_of_the_old_run_it_deleted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--overwrite of a run with TensorBoard and W&B logs prints one line naming each file and log folder it deleted
    (not the user's own file, which stays); quiet with progress off, and silent where nothing was there to delete."""
    from flipes.config import TrainConfig
    from flipes.rundir import prepare_run_dir

    run = tmp_path / "run"
    for progress in (True, False):
        for name in ("tensorboard", "wandb"):
            (run / name).mkdir(parents=True, exist_ok=True)
            (run / name / "events").write_text("x")
        for name in ("checkpoint.pt", "metrics.jsonl", "notes.txt"):
            (run / name).write_text("x")
        prepare_run_dir(run, TrainConfig(out=str(run), overwrite=True, progress=progress)).release()
        said = capsys.readouterr().err
        assert said == (
            f"flipes: --overwrite: deleted the old run's checkpoint.pt, metrics.jsonl, tensorboard/, wandb/ in {run}\n"
            if progress
            else ""
        )
        assert sorted(p.name for p in run.iterdir()) == [".lock", "config.json", "notes.txt"]
    prepare_run_dir(tmp_path / "new", TrainConfig(out=str(tmp_path / "new"), overwrite=True)).release()
    assert capsys.readouterr().err == ""


def test_a_resume_turning_track_best_on_or_off_says_what_the_best_member_then_is(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``flipes train --resume`` with --track-best on a run trained without it says once that the best member is
    kept from the resumed generation on only; resumed with it again, nothing; with --track-best false, that the kept
    best member is dropped at the next checkpoint (as it is: best-member is then refused)."""
    from flipes.commands import main

    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    note = "flipes: --track-best from generation 1 on: the run kept no best member before, so --checkpoint best-member"
    dropped = "flipes: resumed without --track-best, which the run was trained with: the best member it kept is dropped"
    for generations, flag, said in ((2, ["--track-best"], note), (3, [], None), (4, ["--track-best", "false"], dropped)):
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "--generations", str(generations), *flag]) == 0
        lines = [line for line in capsys.readouterr().err.splitlines() if "track-best" in line]
        assert len(lines) == (said is not None) and all(line.startswith(said) for line in lines), lines
    with pytest.raises(UsageError, match="kept no best member"):
        flipes.load_policy(run, "best-member")


class _ClosedPipe(io.StringIO):
    """A stream whose reader has ended (``flipes train | head -1``): the first line is taken, the next write fails."""

    def write(self, text: str) -> int:
        if self.getvalue():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_progress_stream_that_can_no_longer_be_written_ends_the_lines_not_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The progress printer whose stream breaks after its first line (a pipe to ``head -1``) raises nothing on that
    generation, the ones after it or at the end, writes nothing more to it, and says once on stderr that training goes
    on with every row in metrics.jsonl; the outcome printer of --progress false raises nothing either."""
    from flipes.callbacks import OutcomePrinter, ProgressPrinter
    from flipes.config import TrainConfig

    state = types.SimpleNamespace(config=TrainConfig(generations=5, eval_every=1), run_dir=tmp_path, timesteps=0,
                                  es=types.SimpleNamespace(generation=0))  # fmt: skip
    stream = _ClosedPipe()
    printer = ProgressPrinter(stream)
    printer.on_train_start(state)  # type: ignore[arg-type]
    for gen in range(5):
        state.es.generation = gen + 1
        row = {"generation": gen, "fitness_mean": 1.0, "fitness_max": 2.0, "seconds": 0.1, "timesteps": 0}
        printer.on_generation(state, row)  # type: ignore[arg-type]
    printer.on_train_end(state, "generations")  # type: ignore[arg-type]
    OutcomePrinter(_ClosedPipe("x")).on_train_end(state, "generations")  # type: ignore[arg-type]
    assert stream.getvalue().startswith("gen   0/5") and stream.getvalue().count("\n") == 1
    said = capsys.readouterr().err.splitlines()
    assert (
        said
        == [
            f"flipes: cannot write the progress lines (Broken pipe); training goes on without them, every row in "
            f"{tmp_path / 'metrics.jsonl'}"
        ]
        * 2
    )


class _PipeClosedAtEnd(io.StringIO):
    """A stream whose reader ends after the generation lines (``| head -2``): the outcome line's write fails."""

    def write(self, text: str) -> int:
        if "gen " not in text:
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)


def test_a_progress_stream_that_breaks_at_the_outcome_line_ends_the_run_as_usual(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The progress printer whose stream takes every generation line and breaks only at the outcome line raises
    nothing at the end of training and says once on stderr that the lines go on in metrics.jsonl."""
    from flipes.callbacks import ProgressPrinter
    from flipes.config import TrainConfig

    state = types.SimpleNamespace(config=TrainConfig(generations=1, eval_every=1), run_dir=tmp_path, timesteps=0,
                                  es=types.SimpleNamespace(generation=0))  # fmt: skip
    stream = _PipeClosedAtEnd()
    printer = ProgressPrinter(stream)
    printer.on_train_start(state)  # type: ignore[arg-type]
    state.es.generation = 1
    printer.on_generation(state, {"generation": 0, "fitness_mean": 1.0, "fitness_max": 2.0, "seconds": 0.1, "timesteps": 0})  # type: ignore[arg-type]
    printer.on_train_end(state, "generations")  # type: ignore[arg-type]
    assert stream.getvalue().startswith("gen   0/1") and stream.getvalue().count("\n") == 1
    assert capsys.readouterr().err.splitlines() == [
        f"flipes: cannot write the progress lines (Broken pipe); training goes on without them, every row in "
        f"{tmp_path / 'metrics.jsonl'}"
    ]


def test_a_second_train_into_a_run_under_way_is_told_it_is_in_use_not_offered_overwrite(tmp_path: Path) -> None:
    """Training into a directory whose run another process trains now (its lock held) is refused as in use, naming
    that process, with or without --overwrite, and not told to pass --overwrite to replace a run that is being
    written; its files stay as they were."""
    from flipes.rundir import RunDirLock

    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    before = _files(run)
    lock = RunDirLock(run)  # another process's, as far as flock is concerned: another open file
    try:
        for overwrite in (False, True):
            with pytest.raises(UsageError, match=rf"^--out: '{run}' is in use by flipes pid \d+ on .*; wait for it to end"):
                flipes.train(**FAST_KW, generations=1, out=str(run), overwrite=overwrite)
    finally:
        lock.release()
    assert _files(run) == before


def test_the_key_check_before_loading_passes_a_lazy_module_as_torchs_load_does() -> None:
    """flipes.checkpoint.state_mismatch, the check made before a state is loaded, finds nothing against a lazy module's
    uninitialized parameters (torch's load_state_dict gives them the saved shapes) and still names a real mismatch."""
    from flipes.checkpoint import state_mismatch

    saved = torch.nn.Linear(3, 4).state_dict()
    assert state_mismatch(saved, torch.nn.LazyLinear(4).state_dict()) == ""
    assert state_mismatch(saved, torch.nn.Linear(3, 5).state_dict()) == (
        "size mismatch for weight: (4, 3) saved, (5, 3) in the model; and 1 more"
    )


def test_a_full_disk_under_metrics_jsonl_is_one_line_and_the_run_resumes_bit_for_bit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """A disk that fills up while a row of metrics.jsonl is written (its flush fails, and the row stays in the file's
    buffer, which the close at the end of training flushes again) ends training with one line and status 1, naming
    the file and the last good checkpoint; no traceback. The run then resumes to the parameters of one never stopped."""
    import errno
    import os

    import flipes.callbacks as callbacks
    from flipes.commands import main

    class FullAfterTwoRows(io.FileIO):  # a disk with room for two rows: every later write fails as the OS's would
        def write(self, data: bytes) -> int:
            if self.name.endswith("metrics.jsonl") and Path(self.name).read_bytes().count(b"\n") >= 2:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return super().write(data)

    def full_open(file: Path, mode: str = "r", encoding: str | None = None) -> io.TextIOWrapper:
        assert mode in ("w", "a"), mode
        return io.TextIOWrapper(io.BufferedWriter(FullAfterTwoRows(str(file), mode)), encoding=encoding)

    run, other = tmp_path / "run", tmp_path / "other"
    monkeypatch.setattr(callbacks, "open", full_open, raising=False)
    # episodes cut at 50 steps: the row that fails to be written is the same at any episode length, at a fraction of the CPU
    argv = ["train", "--env", "CartPole-v1", "--popsize", "8", "--eval-every", "100", "--target", "none", "--plot", "false",
            "--max-episode-steps", "50"]  # fmt: skip
    status = main([*argv, "--tensorboard", "false", "--progress", "false", "--generations", "4", "--out", str(run)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith(f"flipes: error: cannot write {run / 'metrics.jsonl'} (disk full: "), err
    assert f"the last good checkpoint is {run / 'checkpoint.pt'}: --resume {run} continues from it" in err[0], err
    monkeypatch.undo()
    assert main(["train", "--resume", str(run), "--progress", "false"]) == 0
    flipes.train(**FAST_KW, generations=4, eval_every=100, max_episode_steps=50, out=str(other))
    done, reference = (flipes.load_checkpoint(r)["es"]["model"] for r in (run, other))
    assert all(torch.equal(done[k], reference[k]) for k in reference)
    assert [row["generation"] for row in flipes.read_metrics(run)] == [0, 1, 2, 3]


@pytest.mark.parametrize("how", ["removed", "replaced"])
def test_rows_go_on_into_a_metrics_jsonl_removed_or_replaced_by_hand_mid_run(
    tmp_path: Path, capsys: pytest.CaptureFixture, how: str
) -> None:
    """metrics.jsonl removed mid-run, or replaced by an editor's save (a new file renamed over it), still gets every
    later row, with one note naming it: the rows are not written on into the file no path names any more."""
    run = tmp_path / "run"

    class Edit(flipes.Callback):  # a user's callback runs before the logger writes the generation's row
        def on_generation(self, state: object, row: dict) -> None:
            if row["generation"] == 2:
                metrics = run / "metrics.jsonl"
                if how == "removed":
                    metrics.unlink()
                else:
                    (run / "saved.swp").write_bytes(metrics.read_bytes())
                    (run / "saved.swp").replace(metrics)

    flipes.train(**FAST_KW, generations=4, eval_every=100, out=str(run), callbacks=[Edit()])
    rows = [row["generation"] for row in flipes.read_metrics(run)]
    assert rows == ([2, 3] if how == "removed" else [0, 1, 2, 3])
    notes = [line for line in capsys.readouterr().err.splitlines() if "metrics.jsonl" in line]
    assert notes == [f"flipes: {run / 'metrics.jsonl'} was removed or replaced while the run wrote it: its rows go on in "
                     "the file now at that path"], notes  # fmt: skip


def test_a_checkpoint_pt_of_another_run_copied_over_a_runs_own_names_config_json_not_the_flags(tmp_path: Path) -> None:
    """Resuming a run directory whose checkpoint.pt was replaced by another run's (options in config.json differ from
    the checkpoint's, and no flag was given) is refused in one line that names the two files the options differ
    between, not "now" values no flag set; the checkpoint's options continue it."""
    mine, other = tmp_path / "mine", tmp_path / "other"
    flipes.train(**FAST_KW, generations=1, hidden=[8], out=str(mine))
    flipes.train(**FAST_KW, generations=2, hidden=[16], out=str(other))
    shutil.copyfile(other / "checkpoint.pt", mine / "checkpoint.pt")
    with pytest.raises(UsageError) as e:
        flipes.train(**FAST_KW, generations=3, resume=str(mine))
    assert str(e.value) == (
        f"--resume: {mine / 'checkpoint.pt'} was trained with other options than {mine / 'config.json'} records "
        "(--hidden: [16] in the checkpoint, [8] in config.json): another run's checkpoint put in its place, or config.json "
        "edited by hand; pass the checkpoint's options to continue it, or put the run's own checkpoint back"
    )
    assert flipes.train(**FAST_KW, generations=3, hidden=[16], resume=str(mine)).es.generation == 3


def test_a_full_disk_under_config_json_at_a_resume_names_the_last_good_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume on a full disk fails at config.json, the first file it writes: the one line names it, the last good
    checkpoint and the --resume that continues from it, as a full disk elsewhere in a run does; nothing changed."""

    from flipes.errors import StorageError

    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    before = _files(run)

    _full_disk_at("config.json.tmp", monkeypatch)
    with pytest.raises(StorageError) as e:
        flipes.train(**FAST_KW, generations=2, resume=str(run))
    assert str(e.value) == (
        f"cannot write {run / 'config.json'} (disk full: No space left on device); it is unchanged; the last good "
        f"checkpoint is {run / 'checkpoint.pt'}: --resume {run} continues from it once the file can be written"
    )
    assert _files(run) == before and not list(run.glob("*.tmp"))


def test_resuming_previous_pt_beside_a_damaged_checkpoint_keeps_previous_pt_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A damaged checkpoint.pt is refused naming --resume DIR/previous.pt; that resume replaces the damaged file
    with the state it resumed (one note), so the next checkpoint keeps a whole previous.pt, not the damaged file: the
    run holds two checkpoints that load, and it ends on the parameters of one never stopped."""
    run, other = tmp_path / "run", tmp_path / "other"
    flipes.train(**FAST_KW, generations=2, eval_every=100, out=str(run))
    flipes.train(**FAST_KW, generations=3, eval_every=100, out=str(other))
    damaged = run / "checkpoint.pt"
    damaged.write_bytes(damaged.read_bytes()[:100])
    flipes.train(**FAST_KW, generations=3, eval_every=100, resume=str(run / "previous.pt"))
    assert f"flipes: {damaged} is damaged: replaced by the state resumed from {run / 'previous.pt'}" in capsys.readouterr().err
    assert flipes.load_checkpoint(run / "previous.pt")["es"]["generation"] == 0
    done, reference = (flipes.load_checkpoint(r)["es"] for r in (run, other))
    assert done["generation"] == 3 and all(torch.equal(done["model"][k], reference["model"][k]) for k in reference["model"])


def test_temporary_files_a_killed_write_left_are_removed_by_the_next_start_with_a_note(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A process killed between writing a file's temporary copy and its rename (the out-of-memory killer) leaves
    checkpoint.pt.tmp (as big as a checkpoint) and the like: the next start into the run directory removes the run's
    own ones, naming them in one note, and leaves every other file as it was."""
    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    for name in ("checkpoint.pt.tmp", "curves.png.tmp", "notes.txt.tmp"):
        (run / name).write_bytes(b"half a file")
    capsys.readouterr()
    flipes.train(**FAST_KW, generations=2, resume=str(run))
    assert sorted(p.name for p in run.glob("*.tmp")) == ["notes.txt.tmp"]  # not flipes' own: left alone
    notes = [line for line in capsys.readouterr().err.splitlines() if ".tmp" in line]
    assert notes == [f"flipes: removed the temporary files checkpoint.pt.tmp, curves.png.tmp in {run} that a process "
                     "killed while it wrote them left"], notes  # fmt: skip


def test_a_resume_on_a_file_system_without_locks_warns_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A resume into a run directory whose file system takes no lock (flock: ENOLCK, an NFS mount without lockd) says
    once that the directory goes unlocked: its check that no process holds the run and the lock it takes are one
    warning, not two of the same line."""
    import errno
    import fcntl
    import warnings

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    run = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        flipes.train(**FAST_KW, generations=1, out=str(run))
        flipes.train(**FAST_KW, generations=2, resume=str(run))
    said = [str(w.message) for w in caught if "takes no lock" in str(w.message)]
    assert len(said) == 2 and said[0] == said[1], said  # one per command


def test_the_commands_an_error_gives_for_a_run_directory_with_a_space_are_quoted_for_the_shell(tmp_path: Path) -> None:
    """The --resume an error line offers (a damaged checkpoint's previous.pt, a run directory that holds a run) is
    quoted where the path holds a space, so that the command pasted into a shell names that path."""
    import shlex

    run = tmp_path / "my run"
    flipes.train(**FAST_KW, generations=1, out=str(run))
    with pytest.raises(UsageError) as e:
        flipes.train(**FAST_KW, generations=1, out=str(run))
    assert f"continue it with --resume {shlex.quote(str(run))}, train" in str(e.value)
    (run / "checkpoint.pt").write_bytes(b"damaged")
    with pytest.raises(UsageError) as e:
        flipes.train(**FAST_KW, generations=2, resume=str(run))
    assert str(e.value).endswith(f"continue from it with --resume {shlex.quote(str(run / 'previous.pt'))}")


def test_a_full_disk_at_a_new_runs_first_checkpoint_says_the_same_command_starts_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A new run whose first checkpoint (its starting state) meets a full disk says so with the way on, the same
    command once the file can be written, and that command then trains the run."""

    from flipes.errors import StorageError

    run = tmp_path / "run"

    _full_disk_renaming(".pt", monkeypatch)
    with pytest.raises(StorageError) as e:
        flipes.train(**FAST_KW, generations=1, out=str(run))
    assert str(e.value) == (
        f"cannot write {run / 'checkpoint.pt'} (disk full: No space left on device); no checkpoint was written yet: the "
        "same command starts the run once the file can be written"
    )
    monkeypatch.undo()
    assert [row["generation"] for row in flipes.train(**FAST_KW, generations=1, out=str(run)).metrics] == [0]


def test_a_full_disk_under_config_json_resuming_previous_pt_names_it_not_the_damaged_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume of previous.pt (as a damaged checkpoint.pt's error offers) on a full disk fails at config.json: the line
    names previous.pt as the last good checkpoint and its --resume, not the damaged checkpoint.pt beside it."""

    from flipes.errors import StorageError

    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=2, out=str(run))
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:100])

    _full_disk_at("config.json.tmp", monkeypatch)
    with pytest.raises(StorageError) as e:
        flipes.train(**FAST_KW, generations=3, resume=str(run / "previous.pt"))
    assert str(e.value).endswith(
        f"it is unchanged; the last good checkpoint is {run / 'previous.pt'}: --resume {run / 'previous.pt'} continues "
        "from it once the file can be written"
    ), str(e.value)


def test_the_resume_commands_a_stopped_run_offers_are_quoted_for_a_run_directory_with_a_space(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The --resume a stopped run offers (a signal's line of what stays, the outcome line, and a stop while a resume is
    set up) quotes a run directory with a space, so that the command pasted into a shell names that directory."""
    import shlex

    import flipes.training as training
    from flipes.callbacks import outcome
    from flipes.interrupts import StopRequest

    run = tmp_path / "my run"
    quoted = shlex.quote(str(run))
    assert StopRequest(resume=str(run)).kept() == f"the last checkpoint stays: --resume {quoted} continues from it"
    state = types.SimpleNamespace(
        config=types.SimpleNamespace(generations=5, max_timesteps=0), es=types.SimpleNamespace(generation=2), run_dir=run
    )
    assert outcome(state, "interrupted").endswith(f"; --resume {quoted} continues it")  # type: ignore[arg-type]
    flipes.train(**FAST_KW, generations=1, out=str(run))
    said: list[str] = []

    def stop_request(**kw: str) -> None:
        said.append(kw["setting_up"])
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "StopRequest", stop_request)
    with pytest.raises(KeyboardInterrupt):
        flipes.train(**FAST_KW, generations=2, resume=str(run))
    assert said == [f"{run} is as it was: --resume {quoted} continues it"]


def test_the_checkpoint_a_full_disk_or_a_damaged_file_offers_is_quoted_for_a_path_with_a_space(tmp_path: Path) -> None:
    """A full disk's --resume (a run's checkpoint.pt: the directory; its previous.pt: the file) and a damaged
    checkpoint's offer to evaluate or export (--checkpoint) quote a path with a space: pasted, it stays one argument."""
    import shlex

    from flipes.checkpoint import CheckpointError, resume_hint

    run = tmp_path / "my run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    hint = ": --resume {} continues from it once the file can be written"
    assert resume_hint(run / "checkpoint.pt") == hint.format(shlex.quote(str(run)))
    assert resume_hint(run / "previous.pt") == hint.format(shlex.quote(str(run / "previous.pt")))
    e = CheckpointError("damaged", run / "previous.pt", previous_loads=True, option="--checkpoint")
    assert str(e).endswith(f"can be used instead: pass --checkpoint {shlex.quote(str(run / 'previous.pt'))}")


def test_a_full_disk_replacing_a_damaged_checkpoint_names_the_previous_pt_resumed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A resume of previous.pt replaces the damaged checkpoint.pt beside it first; where a full disk stops that write,
    the line names previous.pt and its --resume as the way on, not the damaged checkpoint.pt, and previous.pt is whole."""

    from flipes.errors import StorageError

    run = tmp_path / "run"
    flipes.train(**FAST_KW, generations=2, out=str(run))
    (run / "checkpoint.pt").write_bytes((run / "checkpoint.pt").read_bytes()[:100])
    whole = (run / "previous.pt").read_bytes()

    _full_disk_renaming(".pt", monkeypatch)
    with pytest.raises(StorageError) as e:
        flipes.train(**FAST_KW, generations=3, resume=str(run / "previous.pt"))
    assert str(e.value) == (
        f"cannot write {run / 'checkpoint.pt'} (disk full: No space left on device); the last good checkpoint is "
        f"{run / 'previous.pt'}: --resume {run / 'previous.pt'} continues from it once the file can be written"
    )
    assert (run / "previous.pt").read_bytes() == whole
