"""Evaluate a run's center policy, and optionally record a video of it.

    python scripts/evaluate.py runs/cartpole                      # 100 episodes: mean ± std return
    python scripts/evaluate.py runs/cartpole --checkpoint best --episodes 20 --render cartpole.gif

The policy is rebuilt from the run directory's ``config.json`` and its checkpoint (``latest``:
checkpoint.pt, ``best``: best.pt), observation normalization included. ``--render`` plays one episode
in gymnasium's own implementation of the env with ``render_mode="rgb_array"`` (flipes/ envs are
step-for-step copies of those) and writes a GIF, or an MP4 when imageio with ffmpeg is installed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn

import flipes
from flipes.checkpoint import CheckpointError, load_checkpoint
from flipes.cli import load_callable
from flipes.rl import MLPPolicy, episode_seed, make_vector_env, run_episodes
from flipes.rl.envs import base_id


@dataclass
class Args:
    run: str = ""  # run directory written by scripts/train.py
    episodes: int = 100
    checkpoint: str = "latest"  # latest | best
    seed: int = 12345
    render: str = ""  # out.gif or out.mp4: one rendered episode
    max_frames: int = 1000
    device: str = "cpu"


def parse_args(argv: list[str] | None = None) -> Args:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="run directory written by scripts/train.py")
    for f in dataclasses.fields(Args)[1:]:
        flags = list(dict.fromkeys([f"--{f.name.replace('_', '-')}", f"--{f.name}"]))
        parser.add_argument(*flags, dest=f.name, type=type(f.default), default=f.default)
    return Args(**vars(parser.parse_args(argv)))


def load_policy(run: Path, which: str, env: gym.vector.VectorEnv, device: str) -> nn.Module:
    config = json.loads((run / "config.json").read_text())
    path = run / ("best.pt" if which == "best" else "checkpoint.pt")
    try:
        state = load_checkpoint(path, map_location=device)
    except CheckpointError as e:
        raise SystemExit(str(e)) from None
    if config.get("model"):
        model = load_callable(config["model"], "--model")(env)
    else:
        model = MLPPolicy(env.single_observation_space, env.single_action_space, hidden=config["hidden"])
    model = flipes.flipout(model).to(device)
    model.load_state_dict(state["es"]["model"])
    return model.eval()


def record(policy: nn.Module, env_id: str, path: Path, seed: int, max_frames: int) -> int:
    env = gym.make(base_id(env_id), render_mode="rgb_array")  # gymnasium's own env, without an engine prefix
    obs, _ = env.reset(seed=seed)
    frames = [env.render()]
    device = next(policy.parameters()).device
    with torch.no_grad():
        for _ in range(max_frames):
            action = policy(torch.as_tensor(obs, dtype=torch.float32, device=device)[None])[0]
            obs, _, terminated, truncated, _ = env.step(action.cpu().numpy())
            frames.append(env.render())
            if terminated or truncated:
                break
    fps = env.metadata.get("render_fps", 30)
    env.close()
    if path.suffix == ".gif":
        from PIL import Image

        images = [Image.fromarray(np.asarray(f)) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    else:
        try:
            import imageio.v2 as imageio

            imageio.mimwrite(path, frames, fps=fps)
        except (ImportError, ValueError) as e:
            raise SystemExit(f"--render {path}: MP4 needs `pip install imageio imageio-ffmpeg` ({e}); or use a .gif") from e
    return len(frames)


def main(args: Args) -> tuple[float, float]:
    run = Path(args.run)
    if not (run / "config.json").exists():
        raise SystemExit(f"{run}: no config.json; pass a run directory written by scripts/train.py")
    env_id = json.loads((run / "config.json").read_text())["env"]
    env = make_vector_env(env_id, args.episodes, args.device)
    policy = load_policy(run, args.checkpoint, env, args.device)
    returns = run_episodes(env, policy, episode_seed(args.seed, 0, "evaluate")).returns
    mean, std = returns.mean().item(), returns.std().item() if len(returns) > 1 else 0.0
    print(f"{env_id}: center policy return {mean:.2f} ± {std:.2f} over {args.episodes} episodes ({args.checkpoint} checkpoint)")
    if args.render:
        n = record(policy, env_id, Path(args.render), args.seed, args.max_frames)
        print(f"wrote {args.render} ({n} frames)")
    return mean, std


if __name__ == "__main__":
    main(parse_args())
