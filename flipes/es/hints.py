"""The fix added to an error that a model's forward raised inside a population: ids shared by every member (an
embedding given ``(batch, ...)`` ids, not members first, or one row of ids that ``generate`` extends), a layer's
input without the members' dimension first, a dense module that got no input of the members, or inputs of another
dtype or device than the model's parameters (integers, NumPy's float64) that torch refused deep inside a layer.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from torch import Tensor

from flipes.nn.conv import members_first_fix
from flipes.nn.dense import no_input_fix
from flipes.nn.embedding import first_position, one_row_fix, shared_ids_fix
from flipes.nn.vector import Vector

if TYPE_CHECKING:
    from flipes.es.engine import FlipES

_LAYERS = Path(__file__).resolve().parent.parent / "nn"  # flipes/nn/: the layers' own code
# torch's words for two tensors of one op on different devices or of different dtypes (matmul, addmm, conv, a cast into
# an integer input's dtype; a conv's "Input type (torch.cuda.FloatTensor)" is either); an embedding's float ids
# ("indices") already name their fix
_MISMATCH = re.compile(r"\bdevice|\bcuda|\bmps\b|dtype|scalar type|input type|can't be cast", re.I)


def _in_layers(error: BaseException) -> bool:
    """Whether ``error`` was raised in a call from flipes' layers (not in the fitness's own code around the model)."""
    tb = error.__traceback__
    while tb is not None:
        if Path(tb.tb_frame.f_code.co_filename).resolve().is_relative_to(_LAYERS):  # any OS's separators
            return True
        tb = tb.tb_next
    return False


def moved_fix(es: FlipES) -> str | None:
    """What to do where the model changed dtype or device (``model.double()`` inside a population) after the
    generation's noise was drawn for the model as it was: found from the noise installed, on the error's path only
    (a check per forward would cost every forward)."""
    drawn = {(nz.s.dtype, nz.s.device) for layer in es.layers for nz in layer.__dict__.get("noise") or () if hasattr(nz, "s")}
    for module in es.dense_modules:
        drawn |= {(d.dtype, d.device) for d in (module.member_noise or {}).values() if isinstance(d, Tensor)}
    now = {(p.dtype, p.device) for p in es.params}
    if not drawn - now:
        return None
    said = " and ".join(sorted(f"{dtype} on {device}" for dtype, device in drawn - now))
    return (
        f"flipes: the model's parameters are now {' and '.join(sorted(f'{t} on {d}' for t, d in now))}, but this "
        f"generation's noise was drawn for {said} (the model was converted or moved inside `with es.population()`, or "
        "between two blocks of one generation): call model.double() or model.to(...) before flipes.FlipES(model, ...) "
        "is built; for an ES already run, build a new FlipES for the converted model and load this one's state_dict()"
    )


def input_fix(es: FlipES, error: RuntimeError) -> str | None:
    """What to do where torch refused, inside a layer of the model, a tensor of another device or dtype than the
    model's parameters: the model's inputs moved or converted (an integer or float64 input, as NumPy's arrays and
    ``torch.tensor`` of Python data give, or data left on the CPU); None for any other error."""
    text = str(error)
    if type(error) is not RuntimeError or not es.params or "indices" in text or not _in_layers(error):
        return None
    if not _MISMATCH.search(text):
        return None
    moved = moved_fix(es)
    if moved is not None:
        return moved
    device, dtypes = es.params[0].device, sorted({str(p.dtype) for p in es.params})
    dtype = dtypes[0] if len(dtypes) == 1 else " or ".join(dtypes)
    return (
        f"flipes: the model's parameters are {dtype} on {device}: give it floating-point inputs of that dtype on that "
        f"device, x.to({str(device)!r}, {dtypes[0]}) (integer data and NumPy's float64 arrays need converting: "
        f"torch.as_tensor(array, dtype={dtypes[0]}, device={str(device)!r})); token ids go to an nn.Embedding"
    )


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
    fix = input_fix(es, error)
    if fix is not None:
        raise RuntimeError(f"{error}\n{fix}") from error
