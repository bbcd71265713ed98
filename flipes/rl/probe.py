"""Side information of every env along a rollout, gathered from the very episodes that give the returns.

Novelty search (NS-ES, NSR-ES: Conti et al., 2018, arXiv:1712.06560) and quality diversity (MAP-Elites: Mouret & Clune,
2015, arXiv:1504.04909) need a behaviour of each member beside its return: where an episode ended, its mean
observation, a share of steps in some state. :func:`flipes.rl.run_episodes` and :class:`flipes.rl.RolloutFitness` take a
:class:`Probe` and call it at each step, so no second rollout (or a rollout of one's own) is needed for them.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from flipes.errors import call_mismatch


class Probe:
    """What a rollout gathers of every env beside its return: subclass it and define :meth:`reset`, :meth:`step` and
    :meth:`result`. A rollout calls ``reset`` once after its envs are reset, ``step`` after every env step, then
    ``result``; one probe serves rollout after rollout (a :class:`~flipes.rl.RolloutFitness` rolled out in parts calls
    the three for each part and joins the parts' results in member order).

    Rows are the rollout's envs: in a ``RolloutFitness`` env ``m·K + k`` is member ``m``'s episode ``k`` (``K``
    episodes per member), and ``last_probe`` holds ``result()`` as ``(pop.size, K, ...)``.

    Example, each episode's mean observation over its steps::

        class MeanObs(flipes.rl.Probe):
            def reset(self, env, obs):
                self.sum, self.steps = torch.zeros_like(obs), torch.zeros(len(obs), device=obs.device)

            def step(self, actions, obs, reward, counted, info):
                self.sum += obs * counted[:, None]  # an ended episode's env may go on stepping: masked
                self.steps += counted

            def result(self):
                return self.sum / self.steps[:, None]
    """

    def reset(self, env: Any, obs: Tensor) -> None:
        """Start a rollout of ``env`` (a vector env, torch in and out) whose envs were just reset to ``obs``,
        ``(num_envs, *obs_shape)``. ``env`` is there to read state that the observations leave out (flipes' envs keep
        theirs in ``env.unwrapped.state``). As at :meth:`step`, ``obs`` may be the rollout's own tensor: clone it to keep
        it."""
        raise NotImplementedError(f"{type(self).__name__} defines no reset(env, obs): a Probe defines reset, step and result")

    def step(self, actions: Tensor, obs: Tensor, reward: Tensor, counted: Tensor, info: dict[str, Any]) -> None:
        """After one env step: the ``actions`` it took ``(num_envs, *action_shape)`` (with a rollout's action noise, as
        the env got them), what it returned, ``obs`` ``(num_envs, *obs_shape)``, ``reward`` ``(num_envs,)`` and its
        ``info``, and ``counted`` ``(num_envs,)`` bool, the envs whose episode this step belongs to. An env whose
        episode ended earlier has ``counted`` False: it may have auto-reset and be playing another episode, which
        counts for nothing. The step that ends an episode is counted; at it a SAME_STEP autoreset env (gymnasium's
        option) returns the next episode's first observation, and the final one in ``info["final_obs"]``. The tensors
        may be the rollout's own: clone what is kept beyond this call."""
        raise NotImplementedError(
            f"{type(self).__name__} defines no step(actions, obs, reward, counted, info): a Probe defines reset, step and result"
        )

    def result(self) -> Tensor:
        """What this rollout gathered: ``(num_envs, ...)``, one row per env in the rollout's order. The rollout keeps a
        copy, so a probe may return a tensor it reuses (zeroed in place at the next ``reset``). A result holding NaN is
        refused, naming its rows (infinities pass)."""
        raise NotImplementedError(f"{type(self).__name__} defines no result(): a Probe defines reset, step and result")


# the arguments a rollout passes each method, after self
CALLS = {"reset": ("env", "obs"), "step": ("actions", "obs", "reward", "counted", "info"), "result": ()}


def check_probe(probe: Any, who: str) -> Probe | None:
    """``probe`` where it is ``None`` or a :class:`Probe` instance whose methods a rollout can call; a TypeError naming
    the fix otherwise (a class given for an instance, an object of another kind, a method left undefined or taking
    other arguments: gymnasium's ``step(obs, reward, done, info)``), before any env is stepped."""
    if probe is None:
        return probe
    if isinstance(probe, Probe):
        for name, args in CALLS.items():
            define = f"def {name}({', '.join(('self', *args))})"
            if getattr(type(probe), name, None) is getattr(Probe, name):
                problem = f"{type(probe).__name__} defines no {name}()"
                raise TypeError(f"{who}: {problem}: a Probe defines reset, step and result; {define}")
            if (why := call_mismatch(getattr(probe, name), args)) is not None:
                raise TypeError(
                    f"{who}: {type(probe).__name__}.{name} takes other arguments ({why}); a rollout calls {name}"
                    f"({', '.join(args)}): define it as {define}"
                )
        return probe
    if isinstance(probe, type) and issubclass(probe, Probe):
        raise TypeError(f"{who}: probe is the class {probe.__name__}; pass an instance, probe={probe.__name__}()")
    raise TypeError(
        f"{who}: probe must be a flipes.rl.Probe (reset, step and result), got {type(probe).__name__}; subclass flipes.rl.Probe"
    )


def probe_result(probe: Probe, num_envs: int) -> Tensor:
    """A copy of ``probe.result()``, checked to be a tensor with one row per env of the rollout and no NaN (a ValueError
    naming the probe and the rows otherwise): the probe's own tensor would change under ``last_probe`` (and under the
    parts joined into it) at the probe's next reset."""
    out = probe.result()
    if not isinstance(out, Tensor) or out.dim() == 0 or out.shape[0] != num_envs:
        got = f"shape {tuple(out.shape)}" if isinstance(out, Tensor) else f"a {type(out).__name__}"
        raise ValueError(
            f"{type(probe).__name__}.result() returned {got}, and the rollout has {num_envs} envs: "
            f"return a tensor of shape ({num_envs}, ...), one row per env in the rollout's order"
        )
    # a NaN behaviour ranks arbitrarily in a novelty score and, in an archive, is NaN away from every other: say so here,
    # naming the probe, not later as a fitness or an archive gone wrong (one check per rollout)
    nan = None if not (out.is_floating_point() or out.is_complex()) else out.isnan()
    if nan is not None and bool(nan.any()):
        rows = (nan if nan.dim() == 1 else nan.flatten(1).any(1)).nonzero().flatten().tolist()
        shown = ", ".join(map(str, rows[:8])) + (", ..." if len(rows) > 8 else "")
        raise ValueError(
            f"{type(probe).__name__}.result() returned NaN in {len(rows)} of {num_envs} rows ({shown}): a NaN behaviour "
            "ranks arbitrarily by novelty and is NaN away from every archived one; return finite values (a mean over an "
            "episode's counted steps: divide by steps.clamp(min=1))"
        )
    return out.clone()
