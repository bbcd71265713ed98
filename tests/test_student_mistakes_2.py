"""More habits students bring from other libraries, each refused in one line that names the fix: a NumPy array or a
list given to a Flipout layer (a TypeError naming torch.as_tensor at the layer's dtype and device, as torch.nn's layers
refuse one); other ES libraries' and course notebooks' argument names for FlipES (std=, antithetic=, npop=) and
their methods (es.ask(), es.result()); and a σ of 0."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import math
import re
import warnings
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

import flipes
from flipes.es.foreign import FOREIGN

_LAYERS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...]]] = [
    ("FlipoutLinear", lambda: nn.Linear(4, 2), (4, 4)),
    ("FlipoutConv2d", lambda: nn.Conv2d(1, 2, 3), (4, 1, 5, 5)),
    ("FlipoutConvTranspose1d", lambda: nn.ConvTranspose1d(1, 2, 3), (4, 1, 5)),
]


@pytest.mark.parametrize("inside", [False, True], ids=["outside", "inside"])
@pytest.mark.parametrize("layer, make, shape", _LAYERS, ids=[name for name, _, _ in _LAYERS])
def test_numpy_and_list_inputs_are_refused_naming_the_conversion(
    layer: str, make: Callable[[], nn.Module], shape: tuple[int, ...], inside: bool
) -> None:
    """A NumPy array or nested list, in or outside a population, is a TypeError (as torch.nn's layers raise) naming
    torch.as_tensor at the parameters' dtype and device, with no AttributeError chained to it."""
    model = flipes.flipout(make().double())
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    for x, kind in ((np.ones(shape), "numpy.ndarray"), (np.ones(shape).tolist(), "list")):
        with pytest.raises(TypeError) as caught, es.population() if inside else torch.no_grad():
            model(x)
        assert str(caught.value) == (
            f"{layer}: input must be a torch.Tensor, not {kind}: convert it first, "
            "torch.as_tensor(x, dtype=torch.float64, device='cpu')"
        )
        assert caught.value.__suppress_context__
    with es.population() if inside else torch.no_grad():  # the converted input goes through
        assert model(torch.as_tensor(x, dtype=torch.float64, device="cpu")).shape[0] == 4


def _linear() -> nn.Module:
    return flipes.flipout(nn.Linear(3, 2))


@pytest.mark.parametrize(
    ("keyword", "fix"),
    [
        ("noise_std", "FlipES takes sigma="),
        ("std", "FlipES takes sigma="),
        ("stdev", "FlipES takes sigma="),
        ("noise_scale", "FlipES takes sigma="),
        ("radius_init", "radius_init= is EvoTorch's name; FlipES takes sigma=radius_init/√n"),
        ("antithetic", "antithetic= is estool's name; FlipES takes mirrored="),
        ("rank_fitness", "rank_fitness= is estool's name; FlipES takes shaping=flipes.shaping.centered_ranks"),
        ("forget_best", "forget_best= is estool's name; FlipES takes track_best=True"),
        ("sigma_alpha", "sigma_alpha= is estool's PEPG's name; FlipES takes sigma_lr="),
        ("learning_rate_decay", "torch.optim.lr_scheduler.ExponentialLR(es.optimizer, decay)"),
        ("lr_decay", "torch.optim.lr_scheduler.ExponentialLR(es.optimizer, decay)"),
        ("step_size", "FlipES takes lr="),
        ("alpha", "FlipES takes lr="),
        ("npop", "FlipES takes popsize="),
        ("episodes_per_batch", "FlipES takes popsize="),
        ("random_seed", "FlipES takes seed="),
        ("minimize", "FlipES takes maximize=False"),
        ("maxiter", "FlipES takes no argument: your loop runs the generations"),  # not difflib's maximize=
        ("max_iter", "FlipES takes no argument: your loop runs the generations"),
        ("num_generations", "FlipES takes no argument: your loop runs the generations"),
    ],
)
def test_course_and_estool_keywords_name_flipes_argument(keyword: str, fix: str) -> None:
    """Names from estool, EvoTorch and the NumPy ES loops of course notebooks name FlipES's argument in one line, where
    difflib's closest spelling misled (noise_std is no noise_rank=, lr_decay no weight_decay=, step_size no popsize=)
    or Python named none."""
    with pytest.raises(TypeError, match=rf"^FlipES\(\) got an unexpected keyword argument '{keyword}': ") as refused:
        flipes.FlipES(_linear(), popsize=8, **{keyword: 0.1})
    assert fix in str(refused.value) and "\n" not in str(refused.value)


def test_every_foreign_keyword_names_an_argument_flipes_takes() -> None:
    """Each other library's name is no argument of FlipES (it would never be refused), and each fix of the form
    ``name=...`` names an argument FlipES takes."""
    params = set(inspect.signature(flipes.FlipES).parameters)
    for keyword, (_, fix) in FOREIGN.items():
        assert keyword not in params, keyword
        target = re.match(r"(\w+)=", fix)
        assert target is None or target[1] in params, (keyword, fix)


@pytest.mark.parametrize(
    ("name", "fix"),
    [
        ("ask", "ask/tell (evosax's, estool's, pycma's) is one block here"),
        ("result", "the center is the model's own parameters"),
        ("run", "EvoTorch's run(n) is a loop here: for _ in range(n): es.step(fitness_fn)"),
    ],
)
def test_other_libraries_methods_name_flipes_loop(name: str, fix: str) -> None:
    """``es.ask()``, ``es.result()`` and ``es.run(n)`` are AttributeErrors (hasattr stays False) naming flipes' way in
    one line; other missing names keep Python's message, with the name and object its "Did you mean" reads."""
    es = flipes.FlipES(_linear(), popsize=4, sigma=0.1)
    with pytest.raises(AttributeError) as caught:
        getattr(es, name)()
    message = str(caught.value)
    assert message.startswith(f"'FlipES' object has no attribute '{name}': {fix}") and "\n" not in message
    assert not hasattr(es, name)
    with pytest.raises(AttributeError) as caught:
        es.tel  # noqa: B018
    assert str(caught.value) == "'FlipES' object has no attribute 'tel'"
    assert caught.value.name == "tel" and caught.value.obj is es


def test_ask_names_member_first_inputs_and_a_method_flipes_has() -> None:
    """``es.ask()``'s hint says the inputs are members first and names ``es.member_parameters(i)``, a method FlipES
    has, which gives member i's parameters."""
    es = flipes.FlipES(_linear(), popsize=4, sigma=0.1)
    with pytest.raises(AttributeError, match=r"runs all pop.size members at once, inputs members first; ") as caught:
        es.ask()
    named = re.findall(r"es\.(\w+)\(i\)", str(caught.value))
    assert named == ["member_parameters"] and callable(getattr(es, named[0]))
    with es.population():
        assert set(es.member_parameters(0)) == {"weight", "bias"}


def test_other_libraries_methods_are_not_offered_by_dir() -> None:
    """``dir(es)`` (what a notebook's tab completion lists) offers none of ``ask``, ``result``, ``run``, which FlipES
    refuses, and still lists FlipES's own methods."""
    names = set(dir(flipes.FlipES(_linear(), popsize=4, sigma=0.1)))
    assert not names & {"ask", "result", "run"}
    assert {"step", "tell", "population", "member_parameters"} <= names

    class Runs(flipes.FlipES):
        def run(self, n: int) -> None:  # a subclass's own method of that name is listed
            pass

    assert "run" in dir(Runs(_linear(), popsize=4, sigma=0.1))


def test_step_is_flipes_own_and_not_refused() -> None:
    """``es.step`` is FlipES's own one-generation method: it runs a generation, not a refusal."""
    es = flipes.FlipES(_linear(), popsize=4, sigma=0.1)
    stats = es.step(lambda model, pop: model(torch.ones(pop.size, 3)).sum(-1))
    assert es.generation == 1 and "fitness_mean" in stats


def test_zero_sigma_names_a_positive_one() -> None:
    """A constant σ of 0 names a positive σ and where the mean network is, without a generation; a schedule's bad value
    names its generation and a floor."""
    with pytest.raises(ValueError) as caught:
        flipes.FlipES(_linear(), popsize=4, sigma=0.0)
    assert str(caught.value) == (
        "sigma must be a finite number > 0, got 0.0: pass a positive σ, e.g. sigma=0.05 (the default) "
        "(the mean network is the model called outside es.population())"
    )
    with pytest.raises(
        ValueError, match=r"^sigma must be a finite number > 0, got -0\.1: pass a positive σ, e\.g\. sigma=0\.05 \(the default\)$"
    ):
        flipes.FlipES(_linear(), popsize=4, sigma=-0.1)
    with pytest.raises(ValueError) as caught:
        flipes.FlipES(_linear(), popsize=4, sigma=lambda g: 0.0)
    assert str(caught.value).startswith("sigma must be a finite number > 0, got 0.0 from the schedule at generation 0: ")
    # the floor it names is SigmaDecay's own, by its fields' names (SigmaDecay(0.1, 0.99, min=1e-3) works as written)
    fields = ", ".join(f.name for f in dataclasses.fields(flipes.search.SigmaDecay))
    assert f"flipes.search.SigmaDecay({fields})" in str(caught.value)
    with pytest.raises(ValueError, match=r"got nan from the schedule at generation 0: keep its values finite and > 0, "):
        flipes.FlipES(_linear(), popsize=4, sigma=lambda g: math.nan)


_MORE_LAYERS: list[tuple[str, Callable[[], nn.Module], tuple[int, ...], torch.dtype, bool]] = [
    ("FlipoutGRU", lambda: nn.GRU(3, 2, batch_first=True), (4, 2, 3), torch.float64, True),
    ("FlipoutLSTMCell", lambda: nn.LSTMCell(3, 2), (4, 3), torch.float64, True),
    ("FlipoutGRUCell", lambda: nn.GRUCell(3, 2), (4, 3), torch.float64, True),
    # outside a population these are torch's own layers, with torch's own TypeError
    ("FlipoutEmbedding", lambda: nn.Embedding(5, 2), (4, 2), torch.int64, False),
    ("LayerNorm", lambda: nn.LayerNorm(3), (4, 3), torch.float64, False),
]


@pytest.mark.parametrize("inside", [False, True], ids=["outside", "inside"])
@pytest.mark.parametrize("layer, make, shape, dtype, outside_too", _MORE_LAYERS, ids=[m[0] for m in _MORE_LAYERS])
def test_numpy_inputs_to_recurrent_embedding_and_norm_layers_are_refused_naming_the_conversion(
    layer: str, make: Callable[[], nn.Module], shape: tuple[int, ...], dtype: torch.dtype, outside_too: bool, inside: bool
) -> None:
    """Recurrent layers and cells, embeddings and norms name the conversion for a NumPy input as Linear does (the
    embedding's at its ids' dtype, int64), where an AttributeError of ``.dim()`` or ``.new_zeros`` came from deep inside,
    or a norm's input was called the wrong shape; the converted input goes through."""
    model = flipes.flipout(nn.Sequential(make()).double())
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    x = np.ones(shape, dtype=np.int64 if dtype == torch.int64 else np.float64)
    with pytest.raises(TypeError) as caught, es.population() if inside else torch.no_grad():
        model(x)
    if inside or outside_too:
        assert str(caught.value) == (
            f"{layer}: input must be a torch.Tensor, not numpy.ndarray: convert it first, "
            f"torch.as_tensor(x, dtype={dtype}, device='cpu')"
        )
    with es.population() if inside else torch.no_grad():
        model(torch.as_tensor(x, dtype=dtype))


def test_numpy_inputs_to_flipout_attention_are_refused_naming_the_conversion() -> None:
    """A NumPy query, key or value to Flipout multi-head attention inside a population is one TypeError naming the
    conversion, where ``query.dim()`` raised an AttributeError."""
    model = flipes.flipout(nn.MultiheadAttention(4, 2, batch_first=True).double())
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    x = torch.ones(4, 2, 4, dtype=torch.float64)
    for args in ((x.numpy(), x, x), (x, x, x.numpy()), (x, x.numpy(), x)):
        refused = r"^FlipoutMultiheadAttention: input must be a torch.Tensor, not numpy.ndarray: convert it first, "
        with pytest.raises(TypeError, match=refused + r"torch.as_tensor\(x, dtype=torch.float64, device='cpu'\)$"):
            with es.population():
                model(*args)
    with es.population():
        assert model(x, x, x)[0].shape == (4, 2, 4)


@pytest.mark.parametrize(
    "kwargs, refused",
    [
        ({"shaping": lambda f, g: f}, r"^shaping <lambda> cannot be called as shaping\(fitness\) \(missing a required argument"),
        ({"sigma": lambda: 0.1}, r"^sigma schedule <lambda> cannot be called as sigma\(generation\) \(too many positional"),
        ({"sigma": lambda g, h: 0.1}, r"^sigma schedule <lambda> cannot be called as sigma\(generation\) \(missing a required"),
    ],
    ids=["shaping of two", "schedule of none", "schedule of two"],
)
def test_a_shaping_or_sigma_schedule_of_another_signature_is_refused_as_flipes_is_built(
    kwargs: dict[str, object], refused: str
) -> None:
    """A shaping that takes other arguments than the fitness, or a σ schedule other than the generation, is one
    TypeError naming how flipes calls it, when the FlipES is built (it was Python's bare TypeError at the first
    population or tell); functools.partial(ars, top=2) and a one-argument schedule are taken."""
    with pytest.raises(TypeError, match=refused):
        flipes.FlipES(_linear(), popsize=4, **kwargs)
    flipes.FlipES(_linear(), popsize=4, shaping=functools.partial(flipes.shaping.ars, top=2), sigma=lambda g: 0.1)


def test_a_flipes_built_inside_the_loop_is_warned_that_it_redraws_the_first_generation() -> None:
    """A FlipES built anew each generation over the same model, with the same seed, starts at generation 0 with a
    fresh optimizer: its population is the first generation's again (the same noise, at the moved center). At the
    second such rebuild in a row it warns once naming the loop; a first FlipES, a single rebuild (flipes' own advice
    after freezing parameters or adding a layer), or a rebuild with another seed or shaping does not."""
    x = torch.randn(8, 3)

    def generation(es: flipes.FlipES, model: nn.Module) -> torch.Tensor:
        with es.population():
            fitness = model(x).squeeze(-1)
        es.tell(fitness)
        return fitness

    model = flipes.flipout(nn.Linear(3, 1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = flipes.FlipES(model, popsize=8, seed=0)
        before = [p.detach().clone() for p in model.parameters()]
        seen = generation(first, model)
        second = flipes.FlipES(model, popsize=8, seed=0)  # one rebuild
        moved = [p.detach().clone() for p in model.parameters()]
        again = generation(second, model)
        other = flipes.FlipES(model, popsize=8, seed=1)  # another search, on purpose: it breaks the chain
        generation(other, model)
        third = flipes.FlipES(model, popsize=8, seed=0)  # over another seed's step: no rebuild of its own
        generation(third, model)
        fourth = flipes.FlipES(model, popsize=8, seed=0)  # one rebuild: quiet; the next is the loop
    # the first generation's members again, at the moved center: each fitness moved by the center's change alone
    shift = x @ (moved[0] - before[0]).T + (moved[1] - before[1])
    assert torch.allclose(again, seen + shift.squeeze(-1), rtol=0, atol=1e-5)
    generation(fourth, model)
    with pytest.warns(UserWarning, match=r"^FlipES: built again over layers that a FlipES of the same seed 0 stepped once, "
                      r"itself built so: .* build the FlipES once, before the loop$"):  # fmt: skip
        fifth = flipes.FlipES(model, popsize=8, seed=0)
    generation(fifth, model)
    with warnings.catch_warnings():  # a variant compared on purpose (another shaping) is no rebuild of the same search
        warnings.simplefilter("error")
        flipes.FlipES(model, popsize=8, seed=0, shaping=flipes.shaping.z_score)
