"""What every Flipout layer shares: its perturbed weights ("slots") and the noise slot.

Wen et al., "Flipout: Efficient Pseudo-Independent Weight Perturbations on Mini-Batches", ICLR 2018
(arXiv:1803.04386).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor, nn

from flipes.nn.dense import without_owner
from flipes.nn.reads import NotesReads
from flipes.noise import SlotNoise


@dataclass(frozen=True)
class PerturbedWeight:
    """One weight a Flipout layer perturbs, with its bias.

    The noise is laid out ``(out_channels, in_channels // conv_groups, *kernel)`` as a torch.nn weight;
    member ``n`` has one sign per input channel (``s_n``) and one per output channel (``r_n``). A ``transposed``
    weight is stored ``(in_channels, out_channels // conv_groups, *kernel)`` instead (transformers' Conv1D, torch's
    ConvTranspose): :meth:`stored` puts noise laid out as above into its shape.
    """

    weight: Tensor  # the layer's Parameter, or a tensor read from one (a slice of a packed weight, an autocast copy)
    bias: Tensor | None
    in_channels: int
    out_channels: int
    conv_groups: int = 1
    fixed_rows: tuple[int, ...] = ()  # output rows never perturbed (an embedding's padding row)
    transposed: bool = False  # stored (in, out // conv_groups, *kernel): noise is laid out as for the other order

    @property
    def layout(self) -> Tensor:
        """The weight as ``(out, in // conv_groups, *kernel)``: the parameter, or a view of it if ``transposed`` (a copy
        where a transposed weight has channel groups: no view reorders its blocks)."""
        if not self.transposed:
            return self.weight
        if self.conv_groups == 1:
            return self.weight.transpose(0, 1)
        g, kernel = self.conv_groups, self.weight.shape[2:]
        blocks = self.weight.detach().view(g, self.in_channels // g, self.out_channels // g, *kernel)
        return blocks.transpose(1, 2).reshape(self.out_channels, self.in_channels // g, *kernel)

    def stored(self, t: Tensor) -> Tensor:
        """``t``, laid out ``(..., out, in // conv_groups, *kernel)`` as :attr:`layout`, in the parameter's own
        shape ``(..., *weight.shape)``: ``t`` itself unless ``transposed``; leading dims (members, groups) are kept."""
        if not self.transposed:
            return t
        lead = t.shape[: t.dim() - self.weight.dim()]
        at = len(lead)  # the out dim
        if self.conv_groups == 1:
            return t.transpose(at, at + 1)
        g, kernel = self.conv_groups, self.weight.shape[2:]
        blocks = t.reshape(*lead, g, self.out_channels // g, self.in_channels // g, *kernel)
        return blocks.transpose(at + 1, at + 2).reshape(*lead, *self.weight.shape)


class FlipoutMixin(NotesReads):
    """Base of the Flipout layers.

    ``noise`` is ``None`` outside a population, and the layer then is exactly its torch.nn parent.
    ``flipes.FlipES`` sets it, one ``SlotNoise`` per entry of ``perturbed_weights()``, for the
    duration of ``es.population()``.

    For backprop training a noise model can be attached (``flipes.nn.attach_noise``) as the
    submodule ``backprop_noise``; it is used in training mode when no population is active, every
    example of the minibatch being a member (``flipes.nn.variational``).
    """

    noise: tuple[SlotNoise, ...] | None = None
    flipes_population: int = 0  # the local members of the FlipES that owns the layer (a part's noise has fewer)
    member_noise: dict[str, Tensor] | None = None  # dense per-member noise of dense_parameters()
    has_backprop_noise: bool = False  # its forward samples an attached backprop noise model

    def __getstate__(self) -> dict:
        return without_owner(super().__getstate__())  # type: ignore[misc]

    def perturbed_weights(self) -> list[PerturbedWeight]:
        """The weights this layer perturbs, each with its bias, in a fixed order (the order keys their noise:
        ``noise[i]`` is entry ``i``'s); a subclass defines it."""
        raise NotImplementedError

    def dense_parameters(self) -> dict[str, nn.Parameter]:
        """Parameters of this layer outside ``perturbed_weights()`` that it perturbs per member
        with dense noise (``member_noise[name]``, ``(N, *shape)``), e.g. attention's ``bias_k``."""
        return {}

    def kl(self) -> Tensor:
        """KL(q ‖ p) of the attached posterior (0 without one): this layer's term of the ELBO."""
        pws = self.perturbed_weights()
        attached = self._modules.get("backprop_noise")
        return pws[0].weight.new_zeros(()) if attached is None else attached.kl(pws)
