"""``flipes evaluate --render``: one episode of a policy in gymnasium's own env, rendered to a GIF or MP4
(``record``), and the env made to render it (``render_env``), whose first frame says what rendering lacks."""

from __future__ import annotations

import os
import sys
from collections.abc import Collection, Mapping
from pathlib import Path
from typing import Any

from flipes.checkpoint import discard
from flipes.errors import UsageError, os_reason


def record(
    policy: Any,
    env_id: str,
    path: Path,
    seed: int,
    max_frames: int,
    max_steps: int | None = None,
    env: Any = None,
    env_kwargs: Mapping[str, Any] | None = None,
) -> int:
    """One episode of ``policy`` in gymnasium's own ``env_id`` (cut after ``max_steps`` steps), rendered to a GIF or MP4;
    returns the frames. The policy sees observations in the env's dtype and the env gets actions as its space holds them
    (a Discrete action as a Python int, which toy-text envs index their tables with). ``env``: the env
    :func:`render_env` made for ``env_id`` (made here when None, with the constructor options ``env_kwargs``); closed
    here."""
    import gymnasium as gym
    import numpy as np
    import torch

    from flipes.rl import stepper
    from flipes.rl.envs import base_id

    env = render_env(env_id, env_kwargs) if env is None else env
    obs, first = first_frame(env, env_id, seed)
    frames = [first]
    if not isinstance(frames[0], np.ndarray):
        problem = f"{base_id(env_id)}'s render() returned {type(frames[0]).__name__} in render_mode 'rgb_array'"
        raise UsageError("--render", problem, "return the frame as an (height, width, 3) uint8 array")
    device = next(policy.parameters()).device
    act = stepper(policy)  # a recurrent policy carries its state through the episode
    space = env.action_space
    steps = max_frames - 1 if max_steps is None else min(max_frames - 1, max_steps)  # the reset's frame is the first
    with torch.no_grad():
        for _ in range(steps):
            action = act(torch.as_tensor(np.asarray(obs), device=device)[None])[0].cpu().numpy()  # as the rollouts feed it
            action = int(action) if isinstance(space, gym.spaces.Discrete) else action.astype(space.dtype, copy=False)
            obs, _, terminated, truncated, _ = env.step(action)
            frames.append(env.render())
            if terminated or truncated:
                break
    fps = env.metadata.get("render_fps", 30)
    env.close()
    tmp = path.with_name(f"{path.stem}.tmp{path.suffix}")  # the suffix says the format; replaced all at once
    try:
        if path.suffix == ".gif":
            from PIL import Image

            images = [Image.fromarray(np.asarray(f)) for f in frames]
            images[0].save(tmp, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        else:
            try:
                import imageio.v2 as imageio

                imageio.mimwrite(tmp, frames, fps=fps)
            except (ImportError, ValueError) as e:
                raise UsageError(
                    "--render",
                    f"{path}: MP4 needs imageio with ffmpeg ({e})",
                    "pip install imageio imageio-ffmpeg, or write a .gif",
                ) from None
        os.replace(tmp, path)
    except OSError as e:  # a full disk, a read-only directory: the file that was there stays
        raise UsageError("--render", f"cannot write {path} ({os_reason(e)})", "choose a path you can write") from None
    finally:
        discard(tmp)
    return len(frames)


def first_frame(env: Any, env_id: str, seed: int) -> tuple[Any, Any]:
    """``env`` reset with ``seed``: its first observation and frame, or a UsageError saying what rendering lacks: a
    renderer that is not installed (classic control's pygame, imported at the first frame) or an OpenGL context."""
    import gymnasium as gym

    obs, _ = env.reset(seed=seed)
    try:
        return obs, env.render()
    except gym.error.DependencyNotInstalled as e:
        raise UsageError(
            "--render", f"rendering {env_id} needs packages that are not installed ({e})", "pip install 'flipes[render]'"
        ) from None
    except Exception as e:  # MuJoCo's FatalError, or an AttributeError of a viewer that found no OpenGL
        if "GL" not in f"{type(e).__name__} {e}" and "opengl" not in str(e).lower():
            raise
        headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
        gl = os.environ.get("MUJOCO_GL", "(unset)")
        raise UsageError(
            "--render",
            f"rendering {env_id} found no OpenGL context (MUJOCO_GL={gl}, {'no display' if headless else 'a display'}: {e})",
            "set MUJOCO_GL=egl (an NVIDIA driver or Mesa's libEGL) or MUJOCO_GL=osmesa (Mesa's software renderer)",
        ) from None


def _hidden_columns(env_id: str, kwargs: dict[str, Any]) -> tuple[int, ...]:
    """The observation columns a ``flipes/`` env's ``hide_velocities`` drops (its ``velocity_columns``), taken out of
    ``kwargs``: gymnasium's own env, which renders it, has no such option; empty where nothing is hidden."""
    import importlib

    import gymnasium as gym

    from flipes.rl.envs import split_env_id

    name = split_env_id(env_id)[1].removeprefix("envs:")
    if "hide_velocities" not in kwargs or not name.startswith("flipes/") or name not in gym.registry:
        return ()
    if not kwargs.pop("hide_velocities"):
        return ()
    module, cls = str(gym.spec(name).vector_entry_point).split(":")
    return tuple(getattr(importlib.import_module(module), cls).velocity_columns)


def render_env(env_id: str, env_kwargs: Mapping[str, Any] | None = None, given: Collection[str] = ()) -> Any:
    """gymnasium's own ``env_id`` made to render rgb_array frames with the constructor options ``env_kwargs`` (a run's
    ``--env-kwargs``, those named in ``given`` from the command instead), its Dict or Tuple observations flattened as
    every engine flattens them; a UsageError saying what is missing where it cannot be made (checked before any
    episode), naming whose --env-kwargs held the option gymnasium's env does not take."""
    import gymnasium as gym

    from flipes.rl.envs import GYMNASIUM_MAKE, EnvOptionError, base_id, check_env_options, gymnasium_entry_options
    from flipes.rl.mujoco_log import makes_mujoco, mujoco_warnings_once
    from flipes.rl.spaces import SpaceError, flat_observation_space

    kwargs = dict(env_kwargs or {})
    hidden = _hidden_columns(env_id, kwargs)  # a flipes env's observation option, which gymnasium's env does not take
    if kwargs and base_id(env_id) in gym.registry:  # gymnasium's env may take other options than the engine trained on
        takes = gymnasium_entry_options(base_id(env_id))
        if takes is not None:  # an option set to None is at its default: left out where gymnasium's env does not take it
            kwargs = {k: v for k, v in kwargs.items() if v is not None or k in takes or k in GYMNASIUM_MAKE}

        def check(options: dict[str, Any]) -> None:
            check_env_options(base_id(env_id), "gymnasium, which renders it", options, takes, also=GYMNASIUM_MAKE)

        try:
            check(kwargs)
        except EnvOptionError as e:
            try:  # the run's own options alone: if gymnasium's env takes them, the command's gave the one it does not
                check({k: v for k, v in kwargs.items() if k not in given})
                whose = "this command's --env-kwargs"
            except EnvOptionError:
                whose = "the run's --env-kwargs"
            raise UsageError("--render", f"{e} ({whose})", "evaluate without --render") from None

    headless = sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))
    if headless:  # offscreen rendering needs no window: pygame's dummy driver, MuJoCo's EGL (read at the first render)
        os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
        os.environ.setdefault("MUJOCO_GL", "egl")
    try:
        with mujoco_warnings_once(load=makes_mujoco(base_id(env_id))):  # no MUJOCO_LOG.TXT left in the user's directory
            env = gym.make(base_id(env_id), render_mode="rgb_array", **kwargs)  # gymnasium's own env, without an engine prefix
    except gym.error.DependencyNotInstalled as e:
        raise UsageError(
            "--render", f"rendering {env_id} needs packages that are not installed ({e})", "pip install 'flipes[render]'"
        ) from None
    except (gym.error.UnregisteredEnv, gym.error.DeprecatedEnv) as e:  # an engine's own id, e.g. EnvPool's Taxi-v3
        problem = f"gymnasium has no env {base_id(env_id)!r} to render ({' '.join(str(e).split())[:200]})"
        raise UsageError(
            "--render", problem, "evaluate without --render (EnvPool's ids render only where gymnasium has them)"
        ) from None
    except (TypeError, gym.error.Error) as e:  # an env of one's own: no render_mode argument, or a vector env only
        given = "".join(f", {k}={v!r}" for k, v in kwargs.items())
        problem = f"gymnasium.make({base_id(env_id)!r}, render_mode='rgb_array'{given}) failed ({' '.join(str(e).split())[:200]})"
        fix = "register the env with an entry_point whose env takes render_mode and returns rgb_array frames from render()"
        raise UsageError("--render", problem, fix) from None
    try:
        flat = flat_observation_space(env.observation_space)
    except SpaceError:  # the policy was trained on an engine's own variant (EnvPool's Blackjack: a Box; gymnasium's: a Tuple)
        env.close()
        problem = f"gymnasium's {base_id(env_id)} gives {env.observation_space} observations, which flipes cannot flatten"
        raise UsageError("--render", problem, "evaluate without --render") from None
    if flat is not None:  # as every engine flattens them for the policy
        env = gym.wrappers.FlattenObservation(env)
    if hidden:  # the policy observes the columns the flipes env kept
        space = env.observation_space
        kept = [i for i in range(space.shape[0]) if i not in hidden]
        env = gym.wrappers.TransformObservation(
            env, lambda obs: obs[kept], gym.spaces.Box(space.low[kept], space.high[kept], dtype=space.dtype)
        )
    try:  # a frame now, so that a renderer that is missing (pygame), or no OpenGL, is said before any episode
        first_frame(env, env_id, 0)
    except BaseException:
        env.close()
        raise
    return env
