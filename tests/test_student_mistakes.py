"""What a course's students meet when they bring habits of other libraries to FlipES, each refused in words that name
the fix: inputs a model's layers do not take (integers, NumPy's float64, data on another device), which torch refuses
deep inside flipes' layers, get one more line naming the parameters' dtype and device and the conversion; a negative
lr to minimize a loss names how flipes minimizes one; Keras' and Lightning's callback hooks name flipes' hook; and a
model's parameters given for the model name the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import flipes


def refusal(model: nn.Module, inputs: object) -> str:
    """The message of the RuntimeError the converted ``model`` raises on ``inputs`` inside a population of 4."""
    model = flipes.flipout(model)
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    with pytest.raises(RuntimeError) as caught, es.population():
        model(inputs)
    return str(caught.value)


@pytest.mark.parametrize(
    "model, inputs",
    [
        (nn.Linear(4, 2), torch.ones(4, 3, 4, dtype=torch.long)),  # integer data, members first with 3 examples each
        (nn.Linear(4, 2), torch.from_numpy(np.ones((4, 4)))),  # a NumPy array: float64
        (nn.Sequential(nn.Flatten(), nn.Linear(4, 2)), torch.ones(4, 4, dtype=torch.uint8)),  # pixels
        (nn.Conv2d(1, 2, 3), torch.ones(4, 1, 5, 5, dtype=torch.float64)),
        (nn.GRU(4, 3, batch_first=True), torch.ones(4, 5, 4, dtype=torch.float64)),
    ],
)
def test_inputs_of_another_dtype_are_refused_naming_the_conversion(model: nn.Module, inputs: torch.Tensor) -> None:
    """torch's own line comes first, then flipes' line naming the parameters' dtype and the conversion."""
    torch_line, fix = refusal(model, inputs).splitlines()
    assert "type" in torch_line
    assert fix == (
        "flipes: the model's parameters are torch.float32 on cpu: give it floating-point inputs of that dtype on that "
        "device, x.to('cpu', torch.float32) (integer data and NumPy's float64 arrays need converting: "
        "torch.as_tensor(array, dtype=torch.float32, device='cpu')); token ids go to an nn.Embedding"
    )


def test_inputs_on_another_device_are_refused_naming_the_models_device() -> None:
    """Inputs on another device than the parameters (here torch's meta device; a GPU's alike) name the move."""
    torch_line, fix = refusal(nn.Linear(4, 2), torch.ones(4, 4, device="meta")).splitlines()
    assert "device" in torch_line and fix.startswith("flipes: the model's parameters are torch.float32 on cpu: ")
    assert "x.to('cpu', torch.float32)" in fix


def test_errors_outside_the_layers_and_float_token_ids_get_no_dtype_fix() -> None:
    """The conversion is named only where a layer of the model refused its input: an embedding given float ids keeps
    torch's message (it names the integer ids it needs), and a dtype error of the fitness's own code around the model
    is left as torch raised it."""
    assert "flipes:" not in refusal(nn.Embedding(10, 3), torch.ones(4, 5))
    model = flipes.flipout(nn.Linear(4, 2))
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    with pytest.raises(RuntimeError) as caught, es.population():
        torch.mm(model(torch.ones(4, 4)), torch.ones(2, 1, dtype=torch.float64))
    assert "flipes:" not in str(caught.value)


def test_a_runtime_error_subclass_in_a_layer_keeps_its_type_and_no_input_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    """A subclass of RuntimeError raised inside a layer (CUDA's out-of-memory error, whose words name a device) is
    not an input of another device: it propagates as itself, with no conversion line, for its own handlers."""

    def out_of_memory(*args: object, **kwargs: object) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (device 0; 1.00 GiB free)")

    monkeypatch.setattr(flipes.nn.functional, "check_members", out_of_memory)  # called from flipes' own layer code
    model = flipes.flipout(nn.Linear(4, 2))
    es = flipes.FlipES(model, popsize=4, sigma=0.1, seed=0)
    with pytest.raises(torch.OutOfMemoryError) as caught, es.population():
        model(torch.ones(4, 4))
    assert type(caught.value) is torch.OutOfMemoryError and "flipes:" not in str(caught.value)


def test_a_negative_lr_is_refused_naming_how_to_minimize_a_loss() -> None:
    """``lr=-0.01`` (how some libraries minimize) is refused at construction and on assignment, naming ``-loss`` and
    ``maximize=False``; the fix it names steps as the same FlipES told ``-loss`` would, bit for bit."""
    fix = r"lr must be a finite number >= 0, got -0.01; flipes climbs the fitness .*return -loss .*maximize=False"
    with pytest.raises(ValueError, match=fix):
        flipes.FlipES(flipes.flipout(nn.Linear(4, 2)), popsize=4, lr=-0.01)
    es = flipes.FlipES(flipes.flipout(nn.Linear(4, 2)), popsize=4)
    with pytest.raises(ValueError, match=fix):
        es.lr = -0.01
    ends = []
    for maximize in (True, False):
        torch.manual_seed(0)
        model = flipes.flipout(nn.Linear(4, 2))
        es = flipes.FlipES(model, popsize=8, lr=0.01, seed=0, maximize=maximize)
        for _ in range(3):
            with es.population() as pop:
                loss = model(torch.ones(pop.size, 4)).square().sum(-1)
            es.tell(-loss if maximize else loss)
        ends.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*ends, strict=True))


def test_a_negative_lr_to_train_names_how_training_minimizes_a_loss(tmp_path: Path) -> None:
    """``flipes.train(lr=-0.01)`` (``--lr -0.01``) is refused before training naming minus the loss from the fitness, as
    FlipES's refusal does; ``lr=0`` keeps the plain example."""
    kw = dict(env="none", popsize=4, generations=1, tensorboard=False, plot=False, progress=False, out=str(tmp_path / "r"))
    net = lambda env: flipes.flipout(nn.Linear(3, 2))  # noqa: E731
    fitness = lambda model, pop: -model(torch.ones(pop.size, 3)).square().sum(1)  # noqa: E731
    refused = r"^--lr: must be a finite number > 0, got -0.01; training maximizes .*minus the loss.*positive, e.g. --lr 0.05$"
    with pytest.raises(flipes.UsageError, match=refused):
        flipes.train(model=net, fitness=fitness, lr=-0.01, **kw)
    with pytest.raises(flipes.UsageError, match=r"^--lr: must be a finite number > 0, got 0.0; e.g. --lr 0.05$"):
        flipes.train(model=net, fitness=fitness, lr=0.0, **kw)
    assert not (tmp_path / "r").exists()


# the hooks Keras' and Lightning's callbacks define for a run's, an epoch's and a batch's start and end, validation and
# checkpoints (both libraries' documentation), less those flipes shares by name (on_train_start/end, state_dict)
KERAS_HOOKS = ("on_train_begin", "on_epoch_begin", "on_epoch_end", "on_batch_begin", "on_batch_end", "on_train_batch_begin",
               "on_train_batch_end")  # fmt: skip
LIGHTNING_HOOKS = ("on_fit_start", "on_fit_end", "on_train_epoch_start", "on_train_epoch_end", "on_train_batch_start",
                   "on_train_batch_end", "on_validation_start", "on_validation_end", "on_validation_epoch_start",
                   "on_validation_epoch_end", "on_save_checkpoint", "on_load_checkpoint", "on_exception")  # fmt: skip


@pytest.mark.parametrize("name", sorted({*KERAS_HOOKS, *LIGHTNING_HOOKS}))
def test_a_callback_with_keras_or_lightning_hooks_is_refused_naming_flipes_hook(name: str) -> None:
    """A callback carried over from Keras or Lightning defines hooks flipes.train would never call: each is refused
    before training, naming flipes' hook for that point."""
    from flipes.hooks import HOOKS, checked_callbacks

    carried = type("Carried", (flipes.Callback,), {name: lambda self, *args: None})
    with pytest.raises(flipes.UsageError, match=rf"^callbacks: Carried.{name} is no hook of flipes.train") as caught:
        checked_callbacks([carried()])
    assert any(f"define it as def {hook}(" in str(caught.value) for hook in HOOKS)


@pytest.mark.parametrize(
    "given, named",
    [
        (lambda m: m.parameters(), r"model.parameters\(\) \(a generator of its tensors\)"),
        (lambda m: list(m.parameters()), "a list of 2 tensors"),
        (lambda m: m.state_dict(), r"a dict of 2 tensors \(a state dict\)"),
    ],
    ids=["parameters", "list", "state_dict"],
)
def test_a_models_parameters_given_for_the_model_are_refused_naming_the_model(given: Any, named: str) -> None:
    """``FlipES(model.parameters())`` and ``flipout(model.parameters())`` (torch.optim's habit), a list of the
    parameters or a state dict are refused naming what was given and that the model itself is taken."""
    model = nn.Linear(4, 2)
    for call, where in ((flipes.flipout, r"flipout\(\)"), (lambda g: flipes.FlipES(g, popsize=4), r"FlipES\(model, ...\)")):
        with pytest.raises(TypeError, match=rf"^{where} takes the model itself, a torch.nn.Module, got {named}; pass the model"):
            call(given(model))
