"""Observation normalization with running statistics (Salimans et al., 2017, arXiv:1703.03864).

The statistics are frozen while a generation is evaluated, so every member sees the same
normalization; observations seen meanwhile are only recorded, per member, and merged by
``update()`` after the generation. Per-member sums make the merge independent of how members are
split across processes: gather every member's row, sum in member order. The statistics are
buffers of the policy: saved with it, applied at evaluation.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

from flipes.dist import Comm  # at run time too: typing.get_type_hints(RunningNorm.update) resolves it
from flipes.errors import UsageError, caller_stacklevel
from flipes.noise import compiling

# observation dtypes whose products (x·w)·x are exact in float64 (at most 2 × 24 significant bits)
_EXACT_SQUARES = frozenset({torch.float32, torch.float16, torch.bfloat16})


class RunningNorm(nn.Module):
    """``(x - mean) / std`` with the mean and variance of all observations recorded so far.

    Args:
        size: observation features.
        clip: normalized values are clipped to ``[-clip, clip]``.
        eps: variance floor.

    Shape:
        ``(*, size) -> (*, size)``.
    """

    # the buffers __init__ registers, declared for a type checker (nn.Module's __getattr__ types them Tensor | Module)
    mean: Tensor  # (size,) float64, the running mean
    var: Tensor  # (size,) float64, the running variance
    count: Tensor  # () float64, observations recorded
    _rows: tuple[Tensor, Tensor] | None = None  # _scale's two rows, selected once (two ops fewer per step)
    _watched: tuple[int, ...] | None = None  # _stamp() of the statistics _scale was computed from
    _held: tuple[Tensor, ...] = ()  # those statistics tensors, kept alive so that no new buffer can take their id
    pending_members = pending_popsize = 0  # set in __init__; here too for a norm unpickled from before they existed

    def __init__(self, size: int, clip: float = 5.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.size, self.clip, self.eps = size, clip, eps
        self.register_buffer("mean", torch.zeros(size, dtype=torch.float64))
        self.register_buffer("var", torch.ones(size, dtype=torch.float64))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.pending: Tensor | None = None  # (members, 1 + 2·size): [count, Σx, Σx²] of this generation
        self.pending_generation: int | None = None  # the generation they belong to, where a rollout said so
        # members whose observations rollouts recorded in pending, and the popsize of their population:
        # fewer is a process's share under MPI, which merged alone would give each process other statistics
        self.pending_members, self.pending_popsize = 0, 0
        self._scale: Tensor | None = None  # (mean, 1/std) in the input dtype, cached until the statistics change
        self._identity = True  # no statistics yet: the input passes unchanged

    def extra_repr(self) -> str:
        return f"{self.size}, clip={self.clip}"

    def forward(self, x: Tensor) -> Tensor:
        if compiling():  # torch.export / torch.compile: no host read, nothing cached; the same numbers
            return torch.where(self.count == 0, x, self._normalize(x, self._stats(x.dtype)))
        if (
            self._rows is None
            or self._scale is None
            or self._scale.dtype != x.dtype
            or self._scale.device != x.device
            or self._watched != self._stamp()
        ):
            # reading `count` waits for the device: once per update, not at every step of a rollout
            self._identity = self.count.item() == 0
            self._scale = self._stats(x.dtype)
            self._rows = (self._scale[0], self._scale[1])
            self._watched = self._stamp()
            b = self._buffers
            self._held = (b["mean"], b["var"], b["count"])  # type: ignore[assignment]
        if self._identity:
            return x
        mean, inv_std = self._rows
        return ((x - mean) * inv_std).clamp_(-self.clip, self.clip)  # _normalize, with the rows at hand

    def _stamp(self) -> tuple[int, ...]:
        """Which statistics tensors the cache was made from, and their in-place write counts: statistics written by hand
        (``obs_norm.mean.copy_(m)``, as when importing another library's, or a buffer assigned anew) then reach the next
        forward instead of the cached ones. Inference tensors keep no count: only an assignment is seen there."""
        b = self._buffers
        mean, var, count = b["mean"], b["var"], b["count"]
        try:  # versions only grow, so their sum changes at every write
            return id(mean), id(var), id(count), mean._version + var._version + count._version  # type: ignore[union-attr]
        except RuntimeError:  # "Inference tensors do not track version counter"
            return id(mean), id(var), id(count)

    def _stats(self, dtype: torch.dtype) -> Tensor:
        """``(mean, 1/std)`` in ``dtype``."""
        return torch.stack((self.mean, (self.var + self.eps).rsqrt())).to(dtype)

    def _normalize(self, x: Tensor, scale: Tensor) -> Tensor:
        return ((x - scale[0]) * scale[1]).clamp_(-self.clip, self.clip)

    @torch.no_grad()
    def record(self, x: Tensor, mask: Tensor | None = None) -> None:
        """Add observations ``(members, *, size)`` to each member's pending sums (only where ``mask``,
        of shape ``(members, *)``, is true)."""
        x = x.reshape(x.shape[0], -1, self.size).double()
        w = torch.ones(x.shape[:2], dtype=x.dtype, device=x.device) if mask is None else mask.reshape(x.shape[:2]).to(x.dtype)
        wx = x * w.unsqueeze(-1)
        sums = torch.cat((w.sum(1, keepdim=True), wx.sum(1), (wx * x).sum(1)), dim=1)
        self.pending = sums if self.pending is None else self.pending + sums

    def recorder(self, mask: Tensor, members: int) -> Callable[[Tensor], None] | None:
        """``record(x.view(members, 1, size), mask.view(members, 1))`` as a function of ``x`` ``(members, size)``, for a
        rollout of one episode per member whose ``mask`` (``(members,)`` bool) is updated in place between calls: the
        very sums, in 4 ops a call instead of record's 12, into a buffer that becomes ``pending``. ``None`` where it
        does not apply (a subclass's own ``record`` or one set on the norm, or more than one observation per member: call
        ``record``).

        Why the same bits: ``record`` sums each member's one row over a dimension of size 1, ``0 + a`` (+0 for
        ``a = -0``), and adds that to ``pending``; here ``a`` is added to a buffer that starts at ``0 + pending`` (or 0).
        The two differ only where both the buffer and ``a`` are -0, and the buffer never is: it starts at ``+0 + p``
        and each step adds to it (a sum is -0 only when both terms are). ``x·w·x`` is exact in float64 for
        observations of float32 or narrower, so that product is accumulated in one ``addcmul_``; float64 ones
        multiply and add in two ops, as ``record``."""
        own = "record" in self.__dict__ or type(self).record is not RunningNorm.record  # a wrapper on the norm, a subclass's
        if own or mask.dim() != 1 or mask.shape[0] != members:
            return None
        size = self.size
        buffer: list[Tensor] = []  # [sums, w, wx, wxx, wx's product buffer] once the first rows give the device
        column = mask.unsqueeze(1)  # a view: follows mask's in-place updates

        def record(x: Tensor) -> None:
            if not buffer:
                if x.shape != (members, size):  # rows of another width (a norm of another size): record's to refuse
                    self.record(x.view(members, 1, -1), column)
                    return
                sums = torch.zeros(members, 1 + 2 * size, dtype=torch.float64, device=x.device)
                if self.pending is not None:
                    sums += self.pending
                wx = torch.empty(members, size, dtype=torch.float64, device=x.device)
                buffer.extend((sums, sums[:, 0], sums[:, 1 : 1 + size], sums[:, 1 + size :], wx))
                self.pending = sums
            elif self.pending is not buffer[0]:  # replaced meanwhile (by hand): record as record would
                self.record(x.view(members, 1, -1), column)
                return
            _, w, wx_sum, wxx_sum, wx = buffer
            w.add_(mask)
            torch.mul(x, column, out=wx)  # x·w: exact in x's dtype, then widened
            wx_sum.add_(wx)
            if x.dtype in _EXACT_SQUARES:
                wxx_sum.addcmul_(wx, x)
            else:
                wxx_sum.add_(wx.mul_(x))

        return record

    @torch.no_grad()
    def update(self, pending: Tensor | None = None, comm: Comm | None = None) -> None:
        """Merge the pending per-member sums (or ``pending``: every process's rows, gathered in
        member order) into the statistics, and clear them.

        ``comm``: in a loop of your own split across processes (``FlipES(..., comm=)``), each process
        records only its members' observations; ``update(comm=es.comm)``, called on every process (a
        collective), gathers every process's rows first, so that all merge the statistics of one process.
        Merging a share of the population without it warns: each process would normalize differently."""
        if pending is None and comm is not None and comm.size > 1:
            local = self.pending if self.pending is not None else self.mean.new_zeros((0, 1 + 2 * self.size))
            pending = comm.allgather_tensor(local.to(torch.float64))
        elif pending is None and self.pending is not None and self.pending_members < self.pending_popsize:
            warnings.warn(
                f"obs_norm.update() merges the observations of {self.pending_members} of the population's "
                f"{self.pending_popsize} members (this process's share under MPI): each process would normalize by "
                "statistics of its own; call obs_norm.update(comm=es.comm) on every process",
                stacklevel=caller_stacklevel(),
            )
        rows = self.pending if pending is None else pending
        self.pending, self.pending_generation = None, None
        self.pending_members, self.pending_popsize = 0, 0
        if rows is None:
            return
        p = rows.to(self.mean.device, torch.float64).sum(0)
        self.check_finite(p)  # merged, one nan or inf would make every later observation nan
        n = p[0]
        if n > 0:
            mean_b = p[1 : 1 + self.size] / n
            var_b = (p[1 + self.size :] / n - mean_b.square()).clamp_(min=0)
            total = self.count + n
            delta = mean_b - self.mean
            # Chan et al.'s parallel merge of (count, mean, M2)
            m2 = self.var * self.count + var_b * n + delta.square() * self.count * n / total
            self.mean += delta * n / total
            self.var.copy_(m2 / total)
            self.count.copy_(total)
            self._scale = None

    def check_finite(self, sums: Tensor | None = None) -> None:
        """Refuse observation sums (``[count, Σx, Σx²]`` rows, or one row; default: the pending ones) that hold nan or
        inf: an env's observation that a merge would spread into every later normalized observation and action.

        Raises:
            UsageError: naming the features that are not finite and the fix."""
        sums = self.pending if sums is None else sums
        if sums is None or bool(torch.isfinite(sums).all()):
            return
        columns = sums.reshape(-1, 1 + 2 * self.size)[:, 1:].reshape(-1, 2, self.size)
        features = torch.nonzero(~torch.isfinite(columns).all(0).all(0)).flatten().tolist()
        shown = ", ".join(map(str, features[:3])) + (", ..." if len(features) > 3 else "")
        raise UsageError(
            "--env",
            f"the env returned observations holding nan or inf (feature(s) {shown} of {self.size}), which the policy's "
            "observation normalization cannot take (its statistics would be nan from then on, and so every action)",
            "fix the env, or clip or replace such values in a wrapper (gymnasium.wrappers.TransformObservation)",
        )

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> RunningNorm:
        # The float64 statistics follow device moves but not casts (policy.to(torch.bfloat16) would round a
        # count of 3000 to 3008). Where fn keeps them float64 (.to(device), .cuda(), to_empty, ...) its result
        # stands; where it casts, the cast result has already lost bits, so redo it from the float64 originals
        # as a move to the device fn chose.
        stats = {k: self._buffers[k] for k in ("mean", "var", "count")}
        super()._apply(fn, recurse)
        for k, t in stats.items():
            applied = self._buffers[k]
            if applied.dtype != torch.float64:
                self._buffers[k] = t.to(device=applied.device)
        return self

    def _load_from_state_dict(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        self._scale = None
        super()._load_from_state_dict(*args, **kwargs)
