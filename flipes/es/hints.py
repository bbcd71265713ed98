"""The fix added to an error that a model's forward raised inside a population: ids shared by every member (an
embedding given ``(batch, ...)`` ids, not members first, or one row of ids that ``generate`` extends), a layer's
input without the members' dimension first, or a dense module that got no input of the members.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flipes.nn.conv import members_first_fix
from flipes.nn.dense import no_input_fix
from flipes.nn.embedding import first_position, one_row_fix, shared_ids_fix
from flipes.nn.vector import Vector

if TYPE_CHECKING:
    from flipes.es.engine import FlipES


def raise_with_fix(es: FlipES, error: RuntimeError) -> None:
    """Raise ``error`` with the fix for ids shared by every member of a population or part, where it is that clash."""
    names = {id(m): name for name, m in es._module.named_modules()}
    shared = [(layer, layer._flipes_shared_ids) for layer in es.layers if getattr(layer, "_flipes_shared_ids", None)]
    for layer, (shape, size, ids) in shared:  # the ids' shape, the members of the population or part that looked them up
        text = str(error)
        fix = shared_ids_fix(shape, size, text, names.get(id(layer)), first_position(ids)) or one_row_fix(shape, size, text)
        if fix is not None and type(error) is RuntimeError:
            raise RuntimeError(f"{error}\n{fix}") from error
    extra = [(f"{names.get(id(m)) or 'the model'} ({type(m).__name__})", m.__dict__["_flipes_extra_dims"])
             for m in es.layers if "_flipes_extra_dims" in m.__dict__]  # fmt: skip
    fix = members_first_fix(extra, error)
    if fix is not None and type(error) in (RuntimeError, NotImplementedError):
        raise type(error)(f"{error}\n{fix}") from error
    ran = {type(m) for m in es.dense_modules if m.__dict__.get("_flipes_no_input") and not isinstance(m, Vector)}
    names = [name for name, m in es._module.named_modules() if type(m) in ran]  # the one that failed, and its kind
    fix = no_input_fix(names, error) if names else None
    if fix is not None:
        raise RuntimeError(f"{error}\n{fix}") from error
