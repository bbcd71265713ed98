"""Other ES libraries' argument names given to ``FlipES(...)``: refused naming FlipES's way to say the same.

A script ported line by line from evosax, EvoTorch, EvoJAX or OpenAI's ES starter passes their names (``sigma_init=``,
``stdev_init=``, ``objective_sense="min"``); Python's own error says only "unexpected keyword argument". As
``flipes.train`` does for its options (``flipes.cli.FOREIGN``), the error names FlipES's argument, here the one of
``FlipES(...)`` (a schedule or an optimizer factory where those libraries have a number).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

_SIGMA = "sigma= (σ, a number or a schedule generation -> σ)"
_SHAPING = "shaping=flipes.shaping.centered_ranks (the default), flipes.shaping.z_score or flipes.shaping.raw"
_SIGMA_DECAY = "sigma=flipes.search.SigmaDecay(sigma, decay, min): σ of generation g is max(sigma·decay^g, min)"
_LR_DECAY = (
    "a torch scheduler stepped after each tell: sched = torch.optim.lr_scheduler.ExponentialLR(es.optimizer, decay) "
    "(flipes.train's lr_decay and lr_min)"
)
_CLIPUP = (
    "optimizer=lambda p: flipes.optim.ClipUp(p, lr=c, max_speed=2 * c) (EvoTorch's ClipUp at c; EvoJAX's PGPE keeps "
    "its own max_speed, 0.15 unless its optimizer_config says: max_speed=0.15, with optimizer='clipup'; at its "
    "default optimizer=None it is plain SGD, optimizer=lambda p: torch.optim.SGD(p, lr=c * sigma**2))"
)
_INIT = "no argument: the model's parameters are the center, set them before FlipES(model, ...)"
_LR_LIMIT = (
    "a torch scheduler stepped after each tell, with a floor: torch.optim.lr_scheduler.LambdaLR(es.optimizer, "
    "lambda g: max(decay**g, limit / lr)) (flipes.train's lr_decay and lr_min)"
)
_LR = "lr= (of torch.optim.Adam, FlipES's default optimizer)"
_POPSIZE = "popsize= (members per generation, all processes together)"
_DIMS = "no argument: FlipES evolves the trainable parameters of model"
_ONE_NUMBER = (
    "one number per member: combine objectives and costs into it (a weighted sum, a penalty, "
    "flipes.shaping.feasible_first) and keep the other values yourself (README: 'Several objectives and constraints')"
)
_BOX = (
    "evaluate each member inside the box, f(x().clamp(lo, hi)), and clamp the centre after each tell (README: "
    "'Black-box search over a vector')"
)
_SEED = "seed= (the noise is a function of seed and generation: no key to split)"

# name -> (whose name it is, "" for many libraries'; FlipES's way to say it)
FOREIGN: dict[str, tuple[str, str]] = {
    "sigma_init": ("evosax's", _SIGMA),
    "stdev_init": ("EvoTorch's", _SIGMA),
    "init_stdev": ("EvoJAX's", _SIGMA),
    "noise_stdev": ("OpenAI's ES starter's", _SIGMA),
    "sigma0": ("pycma's", _SIGMA),
    "sigma_decay": ("evosax's", _SIGMA_DECAY),
    "sigma_limit": ("evosax's", _SIGMA_DECAY),
    "pop_size": ("EvoJAX's", _POPSIZE),
    "population_size": ("evosax's", _POPSIZE),
    "num_dims": ("evosax's", _DIMS),
    "solution_length": ("EvoTorch's", _DIMS),
    "param_size": ("EvoJAX's", _DIMS),
    "lrate_init": ("evosax's", _LR),
    "lrate_decay": ("evosax's", _LR_DECAY),
    "lrate_limit": ("evosax's", _LR_LIMIT),
    "stepsize": ("OpenAI's ES starter's", _LR),
    "learning_rate": ("", _LR),
    "center_learning_rate": ("EvoTorch's and EvoJAX's", _CLIPUP),
    "max_speed": ("EvoTorch's", _CLIPUP),
    "optimizer_config": (
        "EvoJAX's",
        "optimizer=lambda p: flipes.optim.ClipUp(p, lr=center_learning_rate, momentum=0.9, max_speed=0.15) "
        "(its PGPE's optimizer='clipup' at its defaults), or a torch.optim factory",
    ),
    "stdev_learning_rate": (
        "EvoTorch's and EvoJAX's",
        "sigma_lr= (one σ per layer, a standardized natural-gradient step in log σ)",
    ),
    "stdev_max_change": (
        "EvoTorch's and EvoJAX's",
        "sigma_lr= (one σ per layer, adapted without a clamp; sigma_lr=0 keeps σ fixed)",
    ),
    "decay_stdev": ("EvoJAX's OpenES's", _SIGMA_DECAY),
    "limit_stdev": ("EvoJAX's OpenES's", _SIGMA_DECAY),
    "solution_ranking": (
        "EvoJAX's PGPE's",
        "shaping=flipes.shaping.centered_ranks (the default: solution_ranking=True) or flipes.shaping.raw (False)",
    ),
    "symmetric": ("EvoTorch's", "mirrored= (True by default)"),
    "objective_sense": (
        "EvoTorch's",
        'maximize=False for "min" (tell then takes the loss itself), True for "max"; for a list of senses (several '
        f"objectives) tell takes {_ONE_NUMBER}",
    ),
    "eval_data_length": ("EvoTorch's Problem's", f"no argument: tell takes {_ONE_NUMBER}"),
    "fitness_shaping_fn": ("evosax's", _SHAPING + ", or any function fitness (N,) -> weights (N,)"),
    # where difflib's closest spelling misleads: norm_range is no noise_rank=, objective weights no weight_decay=
    "norm_range": (
        "evosax's FitnessShaper's",
        "shaping=lambda f: (f - f.min()) / (f.max() - f.min() + 1e-10) - 0.5 (its range in [-0.5, 0.5]), or "
        "flipes.shaping.centered_ranks (the default, ranks in that range)",
    ),
    "weights": ("", f"no argument for objectives' weights: tell {_ONE_NUMBER}; weight_decay= is an L2 coefficient"),
    "bounds": ("EvoTorch's Problem's", f"no argument for box bounds: {_BOX}"),
    "initial_bounds": (
        "EvoTorch's Problem's",
        "no argument: the model's parameters are the start, set them to a draw in the box before FlipES(model, ...), "
        f"flipes.nn.Vector(torch.empty(n).uniform_(lo, hi)); for bounds: {_BOX}",
    ),
    "ranking_method": ("EvoTorch's", _SHAPING),
    "return_proc_mode": ("OpenAI's ES starter's", _SHAPING),
    "fitness_shaping": ("", _SHAPING),
    "centered_rank": ("evosax's FitnessShaper's", _SHAPING),
    "l2coeff": ("OpenAI's ES starter's", "weight_decay=c/σ (its gradient lacks the 1/σ)"),
    "w_decay": (
        "evosax's FitnessShaper's",
        "weight_decay= (λθ added to the loss gradient, where evosax adds w·mean(θ_n²) to each member's fitness)",
    ),
    "opt_name": ("evosax's", "optimizer= (a torch.optim class, or lambda params: torch.optim.SGD(params, lr=...))"),
    "num_actors": ("EvoTorch's", "comm= (processes are MPI ranks: mpiexec -n K python script.py)"),
    "rng": ("", _SEED),
    "key": ("", _SEED),
    "center_init": ("EvoTorch's", _INIT),
    "init_params": ("EvoJAX's", _INIT),
    "mean_init": ("", _INIT),
    # estool's (OpenES, PEPG) and the names of ES course notebooks, where difflib's closest spelling misleads
    # (noise_std is no noise_rank=, lr_decay no weight_decay=, step_size no popsize=)
    **dict.fromkeys(("std", "stdev", "std_init", "noise_std", "noise_sigma", "noise_scale"), ("", _SIGMA)),
    "radius_init": ("EvoTorch's", "sigma=radius_init/√n for n parameters (EvoTorch's radius is the norm of its σ vector)"),
    "antithetic": ("estool's", "mirrored= (mirrored sampling, True by default; antithetic=False is mirrored=False)"),
    "rank_fitness": (
        "estool's",
        "shaping=flipes.shaping.centered_ranks (the default: rank_fitness=True) or flipes.shaping.raw (False)",
    ),
    "z_score": ("evosax's FitnessShaper's", _SHAPING),
    "forget_best": ("estool's", "track_best=True to keep es.best, the fittest member of all generations (forget_best=False)"),
    "sigma_alpha": ("estool's PEPG's", "sigma_lr= (one σ per layer, a standardized natural-gradient step in log σ)"),
    "num_params": ("estool's", _DIMS),
    "learning_rate_decay": ("estool's", _LR_DECAY),
    "learning_rate_limit": ("estool's", _LR_LIMIT),
    "lr_decay": ("", _LR_DECAY),
    **dict.fromkeys(("step_size", "lrate", "alpha"), ("", _LR)),
    **dict.fromkeys(("npop", "n_pop", "population", "num_population"), ("", _POPSIZE)),
    "episodes_per_batch": ("OpenAI's ES starter's", _POPSIZE),
    "random_seed": ("", _SEED),
    "minimize": ("", "maximize=False (tell then takes the loss itself)"),
    # a run's length (pycma's maxiter, evosax's and EvoTorch's num_generations), where difflib's maximize= misleads
    **dict.fromkeys(
        ("maxiter", "max_iter", "num_generations", "n_generations", "generations", "max_generations"),
        ("", "no argument: your loop runs the generations, for _ in range(n): es.step(fitness_fn) (flipes.train's generations=)"),
    ),
}

_LOOP = "`with es.population() as pop:` model(x) runs all pop.size members at once, inputs members first; then es.tell(fitness)"
# other libraries' methods a ported loop calls on FlipES, which has none of them: what flipes does instead
FOREIGN_METHODS: dict[str, str] = {
    "ask": (
        f"ask/tell (evosax's, estool's, pycma's) is one block here, and no array of candidates comes back: {_LOOP} "
        "(es.member_parameters(i) in it: one member's parameters)"
    ),
    "result": (
        "the center is the model's own parameters (the mean network: the model called outside es.population()); "
        "FlipES(..., track_best=True) keeps es.best, the fittest member so far"
    ),
    "run": "EvoTorch's run(n) is a loop here: for _ in range(n): es.step(fitness_fn), fitness_fn(model, pop) -> Tensor[pop.size]",
}


class ForeignMethod:
    """A method of other libraries' ES (a key of ``FOREIGN_METHODS``) that FlipES lacks: reading it raises the
    AttributeError Python would, with flipes' way added (``hasattr`` stays False)."""

    name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, instance: object, owner: type) -> NoReturn:
        message = f"{owner.__name__!r} object has no attribute {self.name!r}: {FOREIGN_METHODS[self.name]}"
        raise AttributeError(message, name=self.name, obj=instance)


def unknown_keyword_fix(name: str, keywords: Iterable[str]) -> str | None:
    """What to pass instead of the keyword ``name`` that a function of ``keywords`` does not take: another library's
    spelling of one of FlipES's, or the closest of ``keywords``; None where neither is found."""
    if name in FOREIGN:
        whose, ours = FOREIGN[name]
        return f"{name}= is {whose} name; FlipES takes {ours}" if whose else f"FlipES takes {ours}"
    close = difflib.get_close_matches(name, list(keywords), n=3)
    return f"did you mean {', '.join(f'{c}=' for c in close)}?" if close else None


def refuse_foreign_keywords(init: Callable[..., Any], kwargs: dict[str, Any], owner: str) -> None:
    """Raise a ``TypeError`` for the first of ``kwargs`` that ``init`` does not take, naming the fix (see
    :func:`unknown_keyword_fix`); nothing where all are taken or none has a fix (Python's own error then)."""
    if not kwargs:
        return
    params = inspect.signature(init).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    keywords = [n for n, p in params.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and n != "self"]
    for name in kwargs:
        if name not in params:
            fix = unknown_keyword_fix(name, keywords)
            if fix is not None:
                raise TypeError(f"{owner}() got an unexpected keyword argument {name!r}: {fix}")


class InitSignature:
    """``inspect.signature`` (``help()``, a notebook's call tip) of a class that defines ``__new__``: its ``__init__``'s
    without ``self``, not ``__new__``'s ``(*args, **kwargs)``."""

    def __get__(self, instance: object, owner: type) -> inspect.Signature:
        sig = inspect.signature(owner.__init__)
        return sig.replace(parameters=list(sig.parameters.values())[1:])
