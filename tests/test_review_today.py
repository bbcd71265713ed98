"""Edges of today's library changes that their own tests left open."""

from __future__ import annotations

import pytest
from helpers import ROOT, load_script, script_state_kept

from flipes.errors import UsageError
from flipes.plugins import check_call
from flipes.rl import make_vector_env


@pytest.mark.parametrize("threads", [None, "2", 1.5])
def test_make_vector_env_refuses_a_thread_count_that_is_no_integer_by_name(threads: object) -> None:
    """A ``threads=`` that is not an integer (None, a string, a float) is refused with a ValueError naming ``threads``
    and what 0 means, not a TypeError of a comparison inside flipes, nor taken as a count."""
    with pytest.raises(ValueError, match=r"make_vector_env: threads .* an integer .*0.*got " + repr(threads).replace(".", r"\.")):
        make_vector_env("flipes/CartPole-v1", 2, "cpu", threads=threads)


ZERO_REFUSED = ("backprop_variance", "bayes_digits", "bench_backprop_step", "bench_rollout", "profile_rollout")


@pytest.mark.parametrize("script", ZERO_REFUSED)
def test_a_script_that_refuses_0_threads_never_offers_0_in_its_thread_refusal(
    script: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """scripts/SCRIPT.py refuses --threads 0 (exit status 2), so its refusal of more threads than cores names no 0 in its
    fix (it offered "0: torch's default", which the script then refused; for EnvPool threads it is not torch's)."""
    module = load_script(ROOT / "scripts" / f"{script}.py")
    errors = []
    for count in ("0", "100000"):
        with script_state_kept(), pytest.raises(SystemExit) as exited:
            module.run(module.main, module.Args, description=module.__doc__, argv=["--threads", count])
        errors.append(capsys.readouterr().err)
        assert exited.value.code == 2, errors[-1]
    assert errors[0].startswith("flipes: error: --threads: must be at least 1"), errors[0]
    assert "threads on a machine of" in errors[1] and "0:" not in errors[1] and "torch" not in errors[1], errors[1]


class _Outer:
    class Fitness:
        def __call__(self, model: object, pop: object) -> None: ...


def test_a_nested_fitness_class_is_refused_with_an_instance_name_python_takes() -> None:
    """A fitness class nested in another is refused with a fix that names the instance by a plain identifier
    (``fitness = _Outer.Fitness()``), not by its dotted qualname lowered (``_outer.fitness = ...``, no valid assignment)."""
    with pytest.raises(UsageError) as refused:
        check_call(_Outer.Fitness, "fitness", "")
    fix = refused.value.fix
    assert f"(fitness = _Outer.Fitness() in {__name__}, then {__name__}:fitness)" in fix, fix
