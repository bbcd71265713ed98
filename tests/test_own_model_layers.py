"""A researcher's own torch models with layer kinds and settings no other test file combines: each converts with
``flipes.flipout`` and each member computes what a plain copy of the model with that member's parameters
(``es.member_state_dict``) computes, or is refused with an error naming the layer and the fix."""

from __future__ import annotations

import copy
import re

import pytest
import torch
from helpers import assert_members_are_their_plain_copies
from torch import Tensor, nn
from torch.nn.utils import parametrizations

import flipes

DT = torch.float64
N = 4


def members_and_plain(make: nn.Module, **es_options: object) -> tuple[nn.Module, nn.Module, flipes.FlipES]:
    """A plain copy of ``make()``, its conversion and a FlipES of N members over the conversion (float64)."""
    torch.manual_seed(0)
    plain = make().to(DT)
    model = flipes.flipout(copy.deepcopy(plain))
    return plain, model, flipes.FlipES(model, popsize=N, sigma=0.1, seed=1, **es_options)


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: parametrizations.weight_norm(nn.ConvTranspose1d(2, 3, 3, stride=2)), (2, 3)),
        (lambda: parametrizations.orthogonal(nn.ConvTranspose2d(3, 3, 2, bias=False)), (3, 3, 3)),
    ],
    ids=["weight_norm-convtranspose1d", "orthogonal-convtranspose2d"],
)
def test_a_transposed_conv_with_a_parametrized_kernel_runs_each_member_as_its_plain_copy(
    make: type[nn.Module], shape: tuple[int, ...]
) -> None:
    """A ConvTranspose whose kernel is a torch.nn.utils.parametrizations weight (weight_norm, orthogonal) converts (its
    computed ``weight`` is no parameter another module could share) and runs per member as a whole: each member's output
    equals its plain copy's to 1e-12, and every trainable parameter of each member differs from the mean."""
    plain, model, es = members_and_plain(lambda: nn.Sequential(make(), nn.Tanh()))
    assert_members_are_their_plain_copies(plain, model, es, torch.randn(N, *shape, dtype=DT), one_row=True)
    member, mean = es.member_state_dict(0), plain.state_dict()
    assert all(not torch.equal(member[name], mean[name]) for name, p in plain.named_parameters())


def batch_norm_run(part_size: int | None, generations: int = 3) -> tuple[Tensor, Tensor, list[Tensor]]:
    """Fitness of each generation, final parameters and buffers of a BatchNorm CNN (training mode, its dropout in eval
    mode as the README's dropout warning advises) trained on 3 images a member, the population in parts of
    ``part_size`` members (None: one pass)."""
    torch.manual_seed(0)
    model = flipes.flipout(
        nn.Sequential(
            nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.5).eval(),
            nn.Flatten(), nn.Linear(64, 3),
        ).to(DT)
    )  # fmt: skip
    es = flipes.FlipES(model, popsize=8, sigma=0.1, lr=0.05, seed=0)
    x, y = torch.randn(3, 1, 4, 4, dtype=DT), torch.tensor([0, 1, 2])

    def fitness(pop: flipes.Population) -> Tensor:
        logits = model(x.expand(pop.size, 3, 1, 4, 4).flatten(0, 1))
        return -nn.functional.cross_entropy(logits, y.repeat(pop.size), reduction="none").view(pop.size, 3).mean(1)

    fits = []
    for _ in range(generations):
        with es.population() as pop:
            fits.append(fitness(pop) if part_size is None else torch.cat([fitness(p) for p in pop.split(part_size)]))
        es.tell(fits[-1])
    return torch.stack(fits), nn.utils.parameters_to_vector(model.parameters()), [b.clone() for b in model.buffers()]


def test_a_batchnorm_model_in_parts_gives_the_fitness_and_steps_of_one_pass() -> None:
    """A BatchNorm CNN in training mode evaluated in parts of 1 and 3 members (``pop.split``) gets the fitness and the
    parameters of one pass over three generations (float64, to 1e-12): each member's batch statistics are its own
    examples', whatever part it is in; and the running statistics stay as built in every case."""
    fits, params, buffers = batch_norm_run(None)
    for size in (1, 3):
        part_fits, part_params, part_buffers = batch_norm_run(size)
        torch.testing.assert_close(part_fits, fits, rtol=0, atol=1e-12)
        torch.testing.assert_close(part_params, params, rtol=0, atol=1e-12)
        assert all(torch.equal(a, b) for a, b in zip(part_buffers, buffers, strict=True))
    norm = nn.BatchNorm2d(4)
    assert torch.equal(buffers[0], norm.running_mean) and torch.equal(buffers[1], norm.running_var) and buffers[2] == 0


def test_spectral_norm_names_the_step_that_keeps_it_normalized_and_that_step_does() -> None:
    """parametrizations.spectral_norm in training mode is refused naming model.eval() and the step after each tell that
    advances the power iteration on the mean weight; trained by ES in eval mode, the weight's spectral norm drifts far
    from 1 without that step (> 2) and stays within 1% of 1 with it (40 generations pushing the layer's outputs up)."""
    norms = []
    for advance in (False, True):
        torch.manual_seed(0)
        model = flipes.flipout(nn.Sequential(parametrizations.spectral_norm(nn.Linear(16, 16)), nn.Tanh(), nn.Linear(16, 1)))
        es = flipes.FlipES(model, popsize=32, sigma=0.05, lr=0.05, seed=0)
        x = torch.randn(64, 16)
        if not advance:
            fix = "call model.eval() (they then stay), and after each tell advance them on the mean weight, layer.train(); "
            with es.population() as pop, pytest.raises(RuntimeError, match=re.escape(fix + "layer.weight; layer.eval()")):
                model(x.expand(pop.size, 64, 16))
        model.eval()
        for _ in range(40):
            with es.population() as pop:
                rows = x.expand(pop.size, 64, 16)
                es.tell(model(rows).mean((1, 2)) + model[0](rows).norm(dim=-1).mean(1))
            if advance:
                model[0].train(), model[0].weight, model[0].eval()
        norms.append(torch.linalg.matrix_norm(model[0].weight.detach(), 2).item())
    assert norms[0] > 2 and abs(norms[1] - 1) < 0.01


def test_a_forward_vmap_cannot_run_is_an_error_naming_the_module_to_freeze_and_freezing_it_runs() -> None:
    """Of two spectral-normed layers in training mode, the first one called is refused naming its path in the model in
    the ``frozen=[...]`` fix (not a bare ``frozen=[...]`` that leaves the user to find it); freezing both as named runs
    the population."""
    make = lambda: nn.Sequential(  # noqa: E731
        nn.Linear(4, 4), parametrizations.spectral_norm(nn.Linear(4, 4)), parametrizations.spectral_norm(nn.Linear(4, 4))
    )
    model = flipes.flipout(make())
    es = flipes.FlipES(model, popsize=4, sigma=0.1)
    with es.population(), pytest.raises(RuntimeError, match=re.escape("freeze it, flipes.flipout(model, frozen=['1']), or ")):
        model(torch.randn(4, 4))
    model = flipes.flipout(make(), frozen=["1", "2"])
    es = flipes.FlipES(model, popsize=4, sigma=0.1)
    with es.population():
        assert model(torch.randn(4, 4)).shape == (4, 4)


class Everything(nn.Module):
    """Token ids through a padded embedding, attention, a LayerNorm, a parameter of a module's own, a GRU, a
    weight_norm Linear and a head tied to the embedding."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8, padding_idx=0)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.norm, self.gain = nn.LayerNorm(8), flipes.nn.Vector(torch.ones(8))
        self.gru = nn.GRU(8, 8, batch_first=True)
        self.mix = parametrizations.weight_norm(nn.Linear(8, 8))
        self.head = nn.Linear(8, 20, bias=False)
        self.head.weight = self.emb.weight

    def forward(self, ids: Tensor) -> Tensor:
        h = self.emb(ids)
        h = self.norm(h + self.att(h, h, h, need_weights=False)[0]) * self.gain(h)
        return self.head(self.mix(self.gru(h)[0]))


def test_generations_keep_no_graph_and_no_tensors_from_one_to_the_next() -> None:
    """Over 30 generations of a model of every kind of layer (Flipout, dense, tied, parametrized, recurrent), the
    fitness has no autograd graph, no parameter's gradient has one, and the number of live tensors after generation 30
    is that after generation 10: nothing a generation makes outlives it (a leak of one tensor a generation shows)."""
    import gc

    torch.manual_seed(0)
    model = flipes.flipout(Everything())
    es = flipes.FlipES(model, popsize=8, sigma=0.05, lr=0.01, seed=0)
    ids = torch.randint(0, 20, (8, 5))
    counts = []
    for generation in range(1, 31):
        with es.population():
            logits = model(ids)
            fitness = -nn.functional.cross_entropy(logits.flatten(0, 1), ids.flatten(), reduction="none").view(8, -1).mean(1)
        assert not fitness.requires_grad
        es.tell(fitness)
        if generation in (10, 30):
            assert all(p.grad is not None and p.grad.grad_fn is None for p in model.parameters())
            gc.collect()
            counts.append(sum(1 for o in gc.get_objects() if issubclass(type(o), Tensor)))
    assert counts[1] == counts[0]
