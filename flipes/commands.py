"""The ``flipes`` command: ``flipes train``, ``flipes evaluate``, ``flipes export``, ``flipes plot`` (also
``python -m flipes``).

    flipes train --env flipes/CartPole-v1 --popsize 64 --seed 0 --out runs/cartpole
    flipes train --config my_run.toml --seed 3          # flags override the file
    flipes train --resume runs/cartpole --generations 200
    flipes evaluate runs/cartpole --checkpoint best --episodes 20 --render cartpole.gif
    flipes export runs/cartpole                         # runs/cartpole/policy.pt2, for torch alone
    flipes plot runs/cartpole runs/cartpole-seed1 --x timesteps
    flipes plot runs/p64/seed* runs/p256/seed* --group config    # each setting's mean over seeds, with a band

A mistake in the options prints one line, ``flipes: error: <option>: <what>; <what to do>``, and
exits with status 2; ``flipes COMMAND --help`` describes every option.

Here: the dispatch (:func:`main`) and each command's run. Each command's options and help text are in
:mod:`flipes.command_options`, the lines ``flipes train`` says at its start in :mod:`flipes.train_notes`, ``flipes
evaluate --render``'s recording in :mod:`flipes.recording`; their names are importable from here too.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.util
import json
import os
import runpy
import select
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from flipes.callbacks import Callback, read_jsonl
from flipes.cli import parse_config, plain_output, print_error, report_usage_error
from flipes.command_options import (  # noqa: F401 (TRAIN_HELP: named from here, as before the split)
    EXPORT_HELP,
    PLOT_HELP,
    TRAIN_HELP,
    EvaluateConfig,
    ExportConfig,
    PlotConfig,
    evaluate_help,
    parse_train_config,
)
from flipes.config import TrainConfig, saved_options
from flipes.errors import StorageError, UsageError, WorkerEndedError
from flipes.recording import first_frame, record, render_env  # noqa: F401 (first_frame: named from here too)
from flipes.train_notes import ModelNote, Note, ResumeNote, other_version_row, preset_lines  # noqa: F401 (other_version_row too)

if TYPE_CHECKING:
    from flipes.dist import Comm


def main_guard(fn: Callable[[], Any], comm: Comm) -> Any:
    """Run ``fn`` so that a failure on one MPI rank ends the whole job with its error (not a hang), its
    warnings about the command's own run shown as one ``flipes: warning:`` line each."""
    from flipes import dist

    try:
        with warnings.catch_warnings():  # restores the process's showwarning after the command
            warnings.showwarning = _command_warning(warnings.showwarning)
            return fn()
    except BaseException as e:
        if comm.size > 1:  # the options were parsed before: a sys.exit here is one rank's (training's own are ended there)
            if isinstance(e, SystemExit):
                dist.abort_on_exit(comm, e, "during flipes train")
            if isinstance(e, UsageError | StorageError | WorkerEndedError | KeyboardInterrupt):
                if comm.rank != 0:  # usually every rank has it: rank 0 says it once, and ends the job
                    time.sleep(3.0)  # a rank alone with it still gets to say it
                if isinstance(e, KeyboardInterrupt):  # a second signal forwarded by mpiexec, or one rank's
                    print(interrupted_line("train", e), file=sys.stderr, flush=True)
                elif comm.rank != 0:  # rank 0 did not end the job first: the error is this rank's (its data, its env)
                    print(f"flipes: error: {' '.join(str(e).split())} (on rank {comm.rank} of {comm.size})", file=sys.stderr,
                          flush=True)  # fmt: skip
                else:
                    print_error(e)
                comm.abort(2 if isinstance(e, UsageError) else 130 if isinstance(e, KeyboardInterrupt) else 1)
            dist.abort_on_exception(comm)
        raise


def _command_warning(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` for a command: a warning that points at the command itself (flipes' entry
    point or script: flipes warns at its caller's line, and here the caller is the command) is one line
    without the file and source line; one from a user's module keeps the usual form."""
    entry = Path(sys.argv[0]).resolve() if sys.argv and sys.argv[0] else None
    package = Path(__file__).resolve().parent
    runpy_file = Path(runpy.__file__).resolve()

    def showwarning(message: Warning | str, category: type[Warning], filename: str, lineno: int, *rest: Any) -> None:
        where = None if filename.startswith("<") else Path(filename).resolve()  # <frozen runpy>: python -m flipes
        if where is None or where in (entry, runpy_file) or where.is_relative_to(package):  # runpy.py: so on 3.10
            ours = category is UserWarning or category.__module__.startswith("flipes")
            kind = "" if ours else f"{category.__name__}: "  # torch's or gymnasium's, raised where flipes called them
            print(f"flipes: warning: {kind}{' '.join(str(message).split())}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, *rest)

    return showwarning


def train_command(argv: Sequence[str] | None = None) -> int:
    """``flipes train``: exit status 0, or 130 when interrupted (Ctrl-C, SIGTERM)."""
    from flipes import dist
    from flipes.config import validate
    from flipes.training import train

    try:  # before MPI starts, which waits for the other ranks up to the run's --mpi-timeout (--help: no MPI)
        with warnings.catch_warnings():
            warnings.showwarning = _command_warning(warnings.showwarning)
            parsed: TrainConfig | Exception = parse_train_config(argv)
    except Exception as e:  # said under main_guard once the ranks have met: once per job
        parsed = e
    with warnings.catch_warnings():  # its own (several processes of a launcher other than MPI's) as one line too
        warnings.showwarning = _command_warning(warnings.showwarning)
        comm = dist.world(parsed.mpi_timeout if isinstance(parsed, TrainConfig) else TrainConfig.mpi_timeout)

    def run() -> int:
        if isinstance(parsed, Exception):
            raise parsed
        config = parsed
        validate(config, comm.size)  # before any note: a mistake is one line
        notes: list[Callback] = []
        if config.progress and not config.resolve_auto_resume().resume:  # a first start, also by --resume auto
            notes += [Note(line) for line in preset_lines(config)]
        if config.progress:
            notes.append(ResumeNote())
        if config.progress and (resume := config.resolve_auto_resume().resume):
            notes.append(TrackBestNote(bool(saved_options(resume).get("track_best", False))))
        if config.model and config.progress:
            notes.append(ModelNote())
        with notes_below_the_live_line():
            result = train(config, comm=comm, callbacks=notes)
        return 130 if result.reason == "interrupted" else 0

    return main_guard(run, comm)


class _Tracked:
    """A text stream that remembers whether its last write left the cursor inside a line (a live progress line)."""

    def __init__(self, stream: Any) -> None:
        self.stream, self.mid_line = stream, False

    def write(self, text: str) -> int:
        if text:
            self.mid_line = not text.endswith("\n")
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:  # isatty, fileno, flush, encoding, ...: the stream's own
        return getattr(self.stream, name)


class _AfterLine:
    """A text stream (stderr) that first ends the line ``line`` left open (stdout's live progress line), so that a note
    written during training starts a line of its own instead of being glued to the end of the progress line."""

    def __init__(self, stream: Any, line: _Tracked) -> None:
        self.stream, self.line = stream, line

    def write(self, text: str) -> int:
        if text and self.line.mid_line:
            with contextlib.suppress(OSError, ValueError):  # a terminal gone (a closed ssh): the note is stderr's to fail
                self.line.write("\n")
                self.line.flush()
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


@contextlib.contextmanager
def notes_below_the_live_line() -> Iterator[None]:
    """Where stdout and stderr are both a terminal that shows a live progress line, each line written to stderr
    (a note, a warning, the line of a Ctrl-C, a traceback) starts below the progress line, which stays as it was
    last drawn; elsewhere (a pipe, a file, ``TERM=dumb``) the streams are left as they are."""
    from flipes.progress import dumb_terminal

    out, err = sys.stdout, sys.stderr
    try:
        live = out.isatty() and err.isatty() and not dumb_terminal(out)
    except (AttributeError, ValueError):  # a closed or replaced stream
        live = False
    if not live:
        yield
        return
    tracked = _Tracked(out)
    sys.stdout, sys.stderr = tracked, _AfterLine(err, tracked)  # type: ignore[assignment]
    try:
        yield
    finally:
        if sys.stdout is tracked:
            sys.stdout = out
        if isinstance(sys.stderr, _AfterLine) and sys.stderr.line is tracked:
            sys.stderr = err
        if tracked.mid_line:  # an exception's traceback, printed after this, on a line of its own
            with contextlib.suppress(OSError, ValueError):
                out.write("\n")
                out.flush()


class TrackBestNote(Callback):
    """What a resume that turns ``--track-best`` on or off does to the best member (``--checkpoint best-member``):
    kept from the resumed generation on, not of the generations before; or dropped at the next checkpoint.
    ``tracked``: whether the run was trained with it (its config.json)."""

    def __init__(self, tracked: bool) -> None:
        self.tracked = tracked

    def on_train_start(self, state: Any) -> None:
        from flipes.rl.envs import print_note

        now, at = state.config.track_best, state.es.generation
        if not state.resumed or at == 0 or now == self.tracked:
            return
        if now:
            print_note(f"--track-best from generation {at} on: the run kept no best member before, so --checkpoint "
                       f"best-member is the fittest member of generations {at} on, not of the whole run")  # fmt: skip
        else:
            print_note(
                "resumed without --track-best, which the run was trained with: the best member it kept is dropped at the "
                "next checkpoint (--checkpoint best-member then refuses); resume with --track-best to keep it"
            )


def checkpoint_origin(run: str, checkpoint: str, state: dict[str, Any]) -> str:
    """Which file ``--checkpoint`` read (its ``state``) and the generation its weights are of, numbered as
    metrics.jsonl's rows: ``runs/cp/best.pt, after generation 12`` (``best`` may be far behind ``latest``)."""
    from flipes.runs import checkpoint_path

    path, es = checkpoint_path(run, checkpoint), state["es"]
    if checkpoint == "best-member":
        return f"{path}, its best member, from generation {es['best']['generation']}"
    return f"{path}, after generation {es['generation'] - 1}" if es["generation"] else f"{path}, before any generation"


def evaluate_command(argv: Sequence[str] | None = None) -> tuple[float, float]:
    """``flipes evaluate``: prints the center policy's mean ± std return; returns them."""
    from flipes.config import LIMITS, check_device
    from flipes.runs import evaluate_policy, import_env_module, policy_and_state, run_config, run_env, run_env_kwargs

    args = parse_config(EvaluateConfig, argv, evaluate_help(), prog="flipes evaluate")
    if args.episodes < 1:
        raise UsageError("--episodes", f"must be at least 1, got {args.episodes}", "e.g. --episodes 100")
    if args.episodes > LIMITS["eval_episodes"]:  # train's --eval-episodes bound: one vector env holds them all
        raise UsageError(
            "--episodes", f"{args.episodes} is beyond any use (at most {LIMITS['eval_episodes']:,})", "is it a typo?"
        )
    if args.render:
        render = Path(args.render)
        if render.suffix not in (".gif", ".mp4"):
            raise UsageError("--render", f"{render}: writes .gif or .mp4 files", "e.g. --render policy.gif")
        if not render.parent.is_dir():
            raise UsageError("--render", f"{render}: no directory {str(render.parent)!r}", "create it first, or write elsewhere")
        if render.suffix == ".gif" and importlib.util.find_spec("PIL") is None:  # the [render] extra's pillow
            raise UsageError("--render", f"{render}: GIF needs pillow, which is not installed", "pip install 'flipes[render]'")
        if render.suffix == ".mp4" and not any(importlib.util.find_spec(m) for m in ("imageio_ffmpeg", "av")):  # checked first
            raise UsageError(
                "--render", f"{render}: MP4 needs imageio with ffmpeg", "pip install imageio imageio-ffmpeg, or write a .gif"
            )
        if args.max_frames < 1:
            raise UsageError("--max-frames", f"must be at least 1, got {args.max_frames}", "e.g. --max-frames 500")
    check_device(args.device)
    env_id = run_env(args.run)
    if args.env:
        import_env_module(args.run, args.env)
    if str(env_id).lower() == "none":
        raise UsageError(args.run, "was trained on a custom fitness (--env none): there is no env to evaluate it on",
                         f"score its centre with your own code: flipes.load_policy({str(args.run)!r}) is its model (a "
                         "Vector's value is that model called); for eval_return rows give train an evaluate(model), "
                         "e.g. beside the fitness function in its module")  # fmt: skip
    policy, state = policy_and_state(args.run, args.checkpoint, args.device)
    config = run_config(args.run)
    cut = config.get("max_episode_steps") or None  # the run's own cut, for envs without a time limit
    kwargs = run_env_kwargs(config, args.run)  # the env the run trained on: its constructor options too
    kwargs = {**kwargs, **args.env_kwargs}  # those given here replace the run's of the same name
    shown = render_env(env_id, kwargs, args.env_kwargs) if args.render else None  # one that cannot render says so first
    try:
        returns = evaluate_policy(policy, env_id, args.episodes, args.seed, args.device, max_steps=cut, env_kwargs=kwargs)
    except BaseException as e:
        if shown is not None:
            shown.close()
        # the run's own env fits its policy: these options did it (a UsageError, as an unknown option, says so itself)
        if args.env_kwargs and isinstance(e, ValueError) and not isinstance(e, UsageError):
            problem = f"{env_id} made with {json.dumps(kwargs)} failed the run's policy ({' '.join(str(e).split())[:300]})"
            raise UsageError("--env-kwargs", problem, "give only options that keep the observations the run trained on") from None
        raise
    mean, std = returns.mean().item(), returns.std().item() if len(returns) > 1 else 0.0
    what = "best member" if args.checkpoint == "best-member" else "center policy"
    episodes = f"{args.episodes} episode{'s' if args.episodes != 1 else ''}"
    origin = checkpoint_origin(args.run, args.checkpoint, state)
    shown_env = f"{env_id} {json.dumps(kwargs)}" if args.env_kwargs else env_id  # which options the return is of
    print(f"{shown_env}: {what} return {mean:.2f} ± {std:.2f} over {episodes} ({origin})")
    if args.render:
        n = record(policy, env_id, Path(args.render), args.seed, args.max_frames, cut, env=shown)
        print(f"wrote {args.render} ({n} frames)")
    return mean, std


def export_command(argv: Sequence[str] | None = None) -> Path:
    """``flipes export``: a run's policy as a torch.export program; prints and returns its path."""
    from flipes.export import export_policy, program_inputs, program_layout
    from flipes.runs import import_env_module

    args = parse_config(ExportConfig, argv, EXPORT_HELP, prog="flipes export")
    if args.env:
        import_env_module(args.run, args.env)
    path = export_policy(args.run, args.out or None, args.checkpoint)
    shown = [
        f"{str(dtype).removeprefix('torch.')} (batch{''.join(f', {d}' for d in shape)})" for dtype, shape in program_inputs(path)
    ]
    call = f"torch.export.load({str(path)!r}).module()"
    flat = program_layout(path)  # a Dict's or Tuple's entries, flattened into the rows the program takes
    if flat:
        shown[0] += f" (the env's {flat.replace(': ', ' flattened as gymnasium.spaces.flatten does: ', 1)})"
    if len(shown) == 1:
        print(f"wrote {path}: {call}(obs) maps observations {shown[0]} to actions")
    else:
        state = f"state {shown[1]}, zeros at an episode's start"
        print(f"wrote {path}: {call}(obs, state) -> (actions, state), observations {shown[0]}, {state}")
    return path


def plot_command(argv: Sequence[str] | None = None) -> Path:
    """``flipes plot``: learning curves of run directories to a PNG; prints and returns its path (with ``--group``, first
    a line per group: its final eval_return, mean ± standard error over seeds)."""
    from flipes.plotting import plot_groups, plot_runs
    from flipes.runs import runs_under
    from flipes.seeds import aggregate_groups, group_runs, seeds_hint, summary, write_csv

    args = parse_config(PlotConfig, argv, PLOT_HELP, prog="flipes plot")
    if not args.runs:
        raise UsageError("flipes plot", "no run directory given", "pass one or more, e.g. flipes plot runs/cartpole")
    empty: list[str] = []  # runs without a complete row
    drawn: list[str] = []  # the others: a group's curve averages these alone (a run without points would empty it)
    for run in args.runs:
        if not (Path(run) / "metrics.jsonl").is_file():
            held = runs_under(run)
            if held:  # a folder of runs (RL Zoo's plot scripts take one): name them
                them = "it" if held[0] == "holds 1 run" else "them"
                raise UsageError(run, f"is not a run directory (no metrics.jsonl) but {held[0]}", f"pass {them}: {held[1]}")
            raise UsageError(run, "is not a run directory (no metrics.jsonl)", "pass directories written by flipes train")
        lines, torn = read_jsonl(Path(run) / "metrics.jsonl")
        if torn:  # a crash mid-write; the curves show the complete rows
            print(f"flipes plot: {run}: skipped {torn} incomplete line(s) of metrics.jsonl", file=sys.stderr)
        if not lines:  # a run whose first generation has not ended: the figure would show no curve of it
            empty.append(run)
        else:
            drawn.append(run)
        if args.x == "timesteps" and lines and all(json.loads(line).get("timesteps", 0) == 0 for line in lines):
            raise UsageError("--x", f"{run} took no env steps (a run with --env none)", "plot it with --x generation or seconds")
    if len(empty) == len(args.runs):  # an empty figure
        which = empty[0] if len(empty) == 1 else f"{' and '.join(empty[:2])}{' ...' if len(empty) > 2 else ''}"
        has = "has" if len(empty) == 1 else "have"
        raise UsageError(which, f"{has} no row in metrics.jsonl yet (no generation has ended)", "plot it once one has")
    for run in empty:
        print(f"flipes plot: {run}: no row in metrics.jsonl yet (no generation has ended): no curve of it", file=sys.stderr)
    out = Path(args.out) if args.out else (Path(args.runs[0]) / "curves.png" if len(args.runs) == 1 else Path("curves.png"))
    if out.suffix.lower() not in (".png", ".svg", ".pdf"):
        raise UsageError("--out", f"{out}: writes .png, .svg or .pdf files", "e.g. --out curves.png")
    if not out.parent.is_dir() and out.parent.exists():
        raise UsageError("--out", f"{out}: {str(out.parent)!r} is not a directory", "write elsewhere")
    if args.csv and args.group == "none":
        raise UsageError("--csv", "writes the curves of groups of seeds", "add --group config (or --group parent)")
    if args.band != "ci95" and args.group == "none":  # a band is drawn around groups' means only
        raise UsageError("--band", "shades the band around the mean of groups of seeds", "add --group config (or --group parent)")
    if args.csv and not Path(args.csv).parent.is_dir() and Path(args.csv).parent.exists():  # a missing one is made, as --out's
        raise UsageError("--csv", f"{args.csv}: {str(Path(args.csv).parent)!r} is not a directory", "write elsewhere")
    if args.group == "none":
        try:
            path = plot_runs(args.runs, out, args.x)
        except ImportError:
            raise UsageError("flipes plot", "needs matplotlib", "pip install 'flipes[plot]'") from None
        except OSError as e:
            raise UsageError("--out", f"cannot write {out} ({e.strerror or e})", "choose a path you can write") from None
        hint = seeds_hint(args.runs)
        if hint:
            print(hint, file=sys.stderr)
        print(path)
        return path
    groups = group_runs(drawn, args.group)  # a seed not started yet leaves its setting's curve to the others
    if all(len(group.runs) == 1 for group in groups):  # likely a mistaken grouping: say so, draw anyway
        print(f"flipes plot: --group {args.group}: no two runs are seeds of one setting", file=sys.stderr)
    aggregates = aggregate_groups(groups, args.x)
    try:
        path = plot_groups(groups, aggregates, out, args.x, args.band)
    except ImportError:
        raise UsageError("flipes plot", "needs matplotlib", "pip install 'flipes[plot]'") from None
    except OSError as e:
        raise UsageError("--out", f"cannot write {out} ({e.strerror or e})", "choose a path you can write") from None
    if args.csv:
        try:
            write_csv(groups, aggregates, args.csv, args.x)
        except OSError as e:
            raise UsageError("--csv", f"cannot write {args.csv} ({e.strerror or e})", "choose a path you can write") from None
    print("\n".join(summary(group, metrics, args.x) for group, metrics in zip(groups, aggregates, strict=True)))
    print(path)
    return path


COMMANDS: MappingProxyType[str, tuple[Callable[[Sequence[str] | None], Any], str]] = MappingProxyType(
    {
        "train": (train_command, "train a policy or model with FlipES"),
        "evaluate": (evaluate_command, "evaluate a run's center policy (and record a video)"),
        "export": (export_command, "a run's policy as a torch.export program, for torch alone"),
        "plot": (plot_command, "plot the learning curves of runs"),
    }
)


# the exit status of a command whose output's reader ended first (``flipes evaluate DIR | true``): a shell's status of
# a process that SIGPIPE ended (128 + 13), which ``set -o pipefail`` scripts get from other tools in that case
READER_GONE = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flipes`` console command; returns the exit status (:data:`READER_GONE` where stdout's
    reader ended before the output was written: quietly, not a BrokenPipeError's traceback)."""
    plain_output()  # --help's σ in a latin-1 or ASCII locale
    try:  # flushed here, not in the interpreter's last flush: a reader gone there is a traceback and status 120
        try:
            status = _main(argv)
        except SystemExit:  # --help's text, still in the buffer
            _flush_stdout()
            raise
        _flush_stdout()
    except BrokenPipeError:
        if not _stdout_gone():  # another pipe (an env worker's): its traceback
            raise
        _stdout_to_null()
        return READER_GONE
    return status


def _flush_stdout() -> None:
    """Flush stdout, where the process has one (``>&-`` leaves Python's ``sys.stdout`` None)."""
    if sys.stdout is not None:
        sys.stdout.flush()


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has ended (poll's POLLERR on its end; False where poll is missing)."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (AttributeError, OSError, ValueError):  # Windows (no poll), a stream without a file descriptor
        return False


def _stdout_to_null() -> None:
    """Point stdout's file descriptor at /dev/null, so that the interpreter's flush of what is left at exit succeeds."""
    try:
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, sys.stdout.fileno())
        os.close(null)
    except (AttributeError, OSError, ValueError):
        pass


def _main(argv: Sequence[str] | None) -> int:
    """:func:`main` but for a reader gone."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        lines = ["usage: flipes {train,evaluate,export,plot} [options]   (flipes COMMAND --help for its options)", ""]
        lines += [f"  {name:9s} {text}" for name, (_, text) in COMMANDS.items()]
        lines += ["", "exit status: 0 done, 1 a run's file cannot be written, 2 a mistake in the options, 130 interrupted,",
                  "141 stdout's reader ended (| head); results go to stdout, notes and errors to stderr"]  # fmt: skip
        print("\n".join(lines), file=sys.stdout if argv else sys.stderr)  # a mistake's usage goes with errors
        return 0 if argv else 2
    if argv[0] == "--version":
        from flipes import __version__

        print(f"flipes {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        close = difflib.get_close_matches(argv[0].lower(), COMMANDS, n=1)  # "trian", "Train": the command meant
        fix = f"did you mean {close[0]}? " if close else ""
        report_usage_error(UsageError(argv[0], "unknown command", f"{fix}use one of {', '.join(COMMANDS)}"))
    fn = COMMANDS[argv[0]][0]
    if argv[0] != "train" and not ({"-h", "--help"} & set(argv)):
        from flipes.dist import launched_world

        rank, size = launched_world()
        if size > 1:  # a job script's mpiexec prefix: each rank would evaluate, print and write the same files alike
            if rank != 0:
                return 0
            print(f"flipes: {argv[0]} runs in one process: rank 0 of the {size} that mpiexec started runs it, the others "
                  "end at once", file=sys.stderr, flush=True)  # fmt: skip
    try:
        with warnings.catch_warnings():  # evaluate's, export's and plot's notes as flipes: warning: lines, as train's
            warnings.showwarning = _command_warning(warnings.showwarning)
            status = fn(argv[1:])
    except KeyboardInterrupt as e:  # a second Ctrl-C or SIGTERM in training (the first one stops after the generation),
        print(interrupted_line(argv[0], e), file=sys.stderr, flush=True)  # or a Ctrl-C in the other commands
        return 130
    except UsageError as e:
        report_usage_error(e)
    except (StorageError, WorkerEndedError) as e:  # a full disk, lost permission, a killed env worker: what is still good
        print_error(e)
        return 1
    return status if isinstance(status, int) else 0


def interrupted_line(command: str, e: KeyboardInterrupt) -> str:
    """The one line of a command stopped at once by ``e``: in training, which signal and what the run keeps."""
    from flipes.interrupts import Interrupted

    if isinstance(e, Interrupted):
        return f"flipes: interrupted: {command} stopped at once by {e.why}; {e.kept}"
    after = "; the run's last checkpoint stays: --resume continues from it" if command == "train" else ""
    return f"flipes: interrupted: {command} stopped at once{after}"


def script(command: str) -> None:
    """``scripts/<command>.py``: the same as ``flipes <command>``."""
    sys.exit(main([command, *sys.argv[1:]]))
