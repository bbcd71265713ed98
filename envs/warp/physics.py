"""Many MuJoCo worlds stepped together on MuJoCo Warp (github.com/google-deepmind/mujoco_warp), seen from torch.

:class:`WarpPhysics` loads gymnasium's own MJCF model of an env (from gymnasium's ``assets``
directory, as ``MujocoEnv`` does), puts it on the device with ``mujoco_warp.put_model`` and
``make_data(nworld=N)``, and shows MuJoCo Warp's arrays as torch tensors that share their memory
(``warp.to_torch``), so torch reads and writes them without copies. :meth:`WarpPhysics.step` is
gymnasium's ``MujocoEnv.do_simulation``: ``frame_skip`` calls of ``mj_step``, then
``mj_rnePostConstraint`` (which fills ``cfrc_ext``). It is recorded once as a graph
(``warp.ScopedCapture``: a CUDA graph on a GPU, Warp's C++ replay on the CPU) and replayed: one
launch instead of hundreds of Python kernel launches, which on the CPU cost more than the physics
itself (measured here: 6.4 ms of launches per ``mj_step`` at any N, 1.2 ms replayed at N = 64).
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Callable, Iterator

import gymnasium as gym
import torch

try:
    import mujoco
    import mujoco_warp as mjw
    import warp as wp
except ImportError as e:  # gymnasium's own exception for a missing extra: flipes' env errors report it as is
    raise gym.error.DependencyNotInstalled(
        f"flipes' MuJoCo envs (flipes/HalfCheetah-v5, ...) run on MuJoCo Warp, which is not installed ({e}); "
        "pip install 'flipes[warp]' (Python >= 3.11)"
    ) from e


def model_path(xml_file: str) -> str:
    """``xml_file`` as gymnasium's ``MujocoEnv`` resolves it: a path, or a file of gymnasium's MuJoCo assets."""
    if xml_file.startswith((".", "/", "~")):
        path = os.path.expanduser(xml_file)
    else:
        from gymnasium.envs import mujoco as gym_mujoco  # its __init__ imports mujoco only, which is here

        path = os.path.join(os.path.dirname(gym_mujoco.__file__), "assets", xml_file)
    if not os.path.exists(path):
        raise OSError(f"File {path} does not exist")
    return path


def resolve_device(device: str | torch.device) -> torch.device:
    """``device`` with its index: Warp finds a CUDA device by index, and ``"cuda"`` has none (torch's
    current CUDA device then); ``"cpu:0"`` is ``"cpu"``, the one name Warp has for it."""
    device = torch.device(device)
    if device.type == "cpu":
        return torch.device("cpu")
    if device.type != "cuda":  # else Warp's bare "Invalid device identifier"
        raise ValueError(f"MuJoCo Warp runs on the CPU or a CUDA GPU; device must be 'cpu' or 'cuda[:k]', got {str(device)!r}")
    if not torch.cuda.is_available():  # else torch's bare "Torch not compiled with CUDA enabled"
        raise RuntimeError(
            f"MuJoCo Warp: device {str(device)!r} asked for, but torch {torch.__version__} sees no CUDA device; "
            "use device='cpu' (Warp's CPU backend)"
        )
    if device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


@contextlib.contextmanager
def _without_settotalmass_note() -> Iterator[None]:
    """Loads gymnasium's half_cheetah.xml without MuJoCo's note that its ``settotalmass`` is deprecated
    (printed at every load, twice a command: a note about gymnasium's file, not the user's run); any
    other MuJoCo warning is a Python warning."""
    previous = mujoco.get_mju_user_warning()

    def note(message: str) -> None:
        if "settotalmass" not in message:
            warnings.warn(f"MuJoCo: {message}", stacklevel=2)

    mujoco.set_mju_user_warning(note)
    try:
        yield
    finally:
        mujoco.set_mju_user_warning(previous)


def load_model(xml_file: str) -> mujoco.MjModel:
    """gymnasium's model ``xml_file`` (see :func:`model_path`) on the host, as MuJoCo C compiles it."""
    with _without_settotalmass_note():
        return mujoco.MjModel.from_xml_path(model_path(xml_file))


class WarpPhysics:
    """``num_worlds`` copies of one MuJoCo model on MuJoCo Warp, with torch views of its state.

    Args:
        xml_file: gymnasium's name of the model (``"half_cheetah.xml"``) or a path.
        num_worlds: N, independent copies.
        frame_skip: ``mj_step`` calls per :meth:`step`.
        device: torch device; ``"cpu"`` runs on Warp's CPU backend, ``"cuda:k"`` on that GPU.
        capture: record :meth:`step` and :meth:`forward` as graphs and replay them. If recording
            fails (say, a CUDA driver without conditional graph nodes), they run launch by launch,
            with a warning.

    Attributes (torch tensors on ``device`` sharing MuJoCo Warp's memory, float32, first dim N):
        qpos ``(N, nq)``, qvel ``(N, nv)``, ctrl ``(N, nu)``, qacc_warmstart ``(N, nv)``,
        qfrc_actuator ``(N, nv)``, xpos and xipos ``(N, nbody, 3)``, cinert ``(N, nbody, 10)``,
        cvel and cfrc_ext ``(N, nbody, 6)``: MuJoCo's ``mjData`` fields of those names, in its layout.
        mj_model: the ``mujoco.MjModel`` (host); body_mass ``(nbody,)`` on ``device``.
    """

    def __init__(self, xml_file: str, num_worlds: int, frame_skip: int, device: str | torch.device, capture: bool = True) -> None:
        self.mj_model = load_model(xml_file)
        if self.mj_model.opt.solver == mujoco.mjtSolver.mjSOL_PGS:
            # Humanoid's XML asks for PGS, which MuJoCo Warp lacks; Newton solves the same convex problem
            self.mj_model.opt.solver = mujoco.mjtSolver.mjSOL_NEWTON
        self.frame_skip = frame_skip
        self.device = resolve_device(device)
        log_level, wp.config.log_level = wp.config.log_level, max(wp.config.log_level, wp.LOG_WARNING)
        try:  # as MuJoCo Warp's own tools: no line per kernel module loaded (some 60 per process)
            self._setup(num_worlds, capture)
        finally:
            wp.config.log_level = log_level

    def _setup(self, num_worlds: int, capture: bool) -> None:
        if self.device.type == "cuda" and wp.get_cuda_device_count() == 0:  # starts Warp's runtime
            raise RuntimeError(
                f"MuJoCo Warp: torch sees {self.device} but Warp {wp.__version__} sees no CUDA device (driver "
                f"{wp.get_cuda_driver_version()}): install a warp-lang built for this driver's CUDA, or use device='cpu'"
            )
        self.wp_device = wp.get_device(str(self.device))  # "cpu" or "cuda:k"
        with wp.ScopedDevice(self.wp_device):
            self.model = mjw.put_model(self.mj_model)
            self.data = mjw.make_data(self.mj_model, nworld=num_worlds)
        d = self.data
        view = wp.to_torch
        self.qpos, self.qvel, self.ctrl = view(d.qpos), view(d.qvel), view(d.ctrl)
        self.qacc_warmstart, self.qfrc_actuator = view(d.qacc_warmstart), view(d.qfrc_actuator)
        self.xpos, self.xipos, self.cinert = view(d.xpos), view(d.xipos), view(d.cinert)
        self.cvel, self.cfrc_ext = view(d.cvel), view(d.cfrc_ext)
        self.body_mass = torch.tensor(self.mj_model.body_mass, dtype=torch.float32, device=self.device)
        self._stream = wp.Stream(self.wp_device) if self.wp_device.is_cuda else None  # capturable (not torch's legacy one)
        self._torch_wrapped: tuple[int, wp.Stream] | None = None
        self._step_graph = self._forward_graph = None
        self._launch(self._step_kernels)  # compiles (or loads the cached kernels) before any recording
        self._launch(lambda: mjw.forward(self.model, self.data))
        if capture:
            try:
                self._step_graph = self._record(self._step_kernels)
                self._forward_graph = self._record(lambda: mjw.forward(self.model, self.data))
            except Exception as e:  # any failure to record leaves the uncaptured path, which always works
                warnings.warn(f"MuJoCo Warp: graph capture failed ({e}); stepping launch by launch", stacklevel=3)
                self._step_graph = self._forward_graph = None

    @property
    def captured(self) -> bool:
        """Whether :meth:`step` replays a recorded graph (else it launches kernel by kernel, and on a GPU
        MuJoCo Warp's solver loop then waits on the host every iteration)."""
        return self._step_graph is not None

    @property
    def dt(self) -> float:
        """Seconds per :meth:`step`: ``timestep × frame_skip``, gymnasium's ``MujocoEnv.dt``."""
        return self.mj_model.opt.timestep * self.frame_skip

    def step(self) -> None:
        """``frame_skip`` ``mj_step`` calls with the controls in :attr:`ctrl`, then ``mj_rnePostConstraint``."""
        self._launch(self._step_kernels, self._step_graph)

    def forward(self) -> None:
        """``mj_forward``: every derived quantity (positions, velocities, forces) from qpos, qvel and ctrl."""
        self._launch(lambda: mjw.forward(self.model, self.data), self._forward_graph)

    def _step_kernels(self) -> None:
        for _ in range(self.frame_skip):
            mjw.step(self.model, self.data)
        mjw.rne_postconstraint(self.model, self.data)

    def _record(self, kernels: Callable[[], None]) -> wp.Graph:
        with wp.ScopedDevice(self.wp_device), wp.ScopedStream(self._stream), wp.ScopedCapture() as capture:
            kernels()
        return capture.graph

    def _launch(self, kernels: Callable[[], None], graph: wp.Graph | None = None) -> None:
        """Runs ``kernels`` (or replays their ``graph``) after the torch work queued so far, and
        before any queued later: on a GPU by stream events, without waiting on the host."""
        with wp.ScopedDevice(self.wp_device):
            if self._stream is None:  # the CPU: Warp and torch both run in this thread, in order
                self._run(kernels, graph)
                return
            torch_stream = self._torch_stream()
            self._stream.wait_stream(torch_stream)  # sees the controls and states torch wrote
            with wp.ScopedStream(self._stream, sync_enter=False):
                self._run(kernels, graph)
            torch_stream.wait_stream(self._stream)  # torch's later reads see the results

    @staticmethod
    def _run(kernels: Callable[[], None], graph: wp.Graph | None) -> None:
        if graph is not None:
            wp.capture_launch(graph)
        else:
            kernels()

    def _torch_stream(self) -> wp.Stream:
        """torch's current stream on the device, as a Warp stream (kept while torch's stays the same)."""
        current = torch.cuda.current_stream(self.device)
        if self._torch_wrapped is None or self._torch_wrapped[0] != current.cuda_stream:
            self._torch_wrapped = (current.cuda_stream, wp.stream_from_torch(current))
        return self._torch_wrapped[1]
