"""Tagged JSON encoding of plain Python data, so values can leave a sandbox without pickle.

``encode`` turns plain data into something ``json.dumps`` accepts (with ``allow_nan=False``);
``decode`` turns such JSON back into plain data and is safe on hostile input: it only ever
builds builtin values, bounds depth and size, and raises ``ValueError`` on anything malformed.

Format (every tagged value is a JSON object with exactly one key):

    None, bool, str              -> themselves
    int                          -> itself when |x| < 2**53, else {"int": hex string}
    float                        -> itself when finite, else {"float": "nan" | "inf" | "-inf"}
    complex                      -> {"complex": [real, imag]}  (each encoded as a float)
    bytes                        -> {"bytes": base64 string}
    list                         -> JSON list of encoded items
    tuple / set / frozenset      -> {"tuple" | "set" | "frozenset": [items]}
    dict                         -> {"dict": [[key, value], ...]}  (any plain keys, order kept)
    collections.Counter          -> {"counter": [[key, value], ...]}  (an MBPP+ reference returns one)

Encoding accepts EXACT types only (``type(x) is int``; ``True`` stays a bool), so subclasses,
e.g. a str whose ``__eq__`` always returns True, are rejected with a ``TypeError`` naming the
type. The one exception: numpy scalars and arrays become Python data via ``.item()`` /
``.tolist()`` when numpy is already imported.

This module must stay importable on its own, by file path, with only the standard library:
the sandbox harness loads it inside the sandbox. Do not import tinyforge or numpy here.
"""

from __future__ import annotations

import base64
import binascii
import collections
import hashlib
import json
import math
import sys
from typing import Any

__all__ = ["MAX_DEPTH", "MAX_SIZE", "decode", "dumps", "encode", "loads"]

MAX_DEPTH = 100
# Size budget, roughly in bytes of JSON: _NODE_COST per value plus one per character of a str,
# of base64 for bytes and of hex for a big int (JSON escapes of non-ASCII text are not counted).
# The default fits every reference output of HumanEval+ and MBPP+ v0.1.0 but one Mbpp/255
# output of 130M tuples; the largest that fits is HumanEval+/160's 282-million-bit int (~71M).
MAX_SIZE = 1 << 27
_NODE_COST = 8
_SAFE_INT = 1 << 53
_NONFINITE = {"nan", "inf", "-inf"}
_SEQ_TAGS = {"tuple": tuple, "set": set, "frozenset": frozenset}


class _Budget:
    __slots__ = ("left",)

    def __init__(self, size: int) -> None:
        self.left = size

    def spend(self, units: int) -> None:
        self.left -= units
        if self.left < 0:
            raise ValueError("plain data exceeds the size limit")


# ---------------------------------------------------------------- encode


def encode(obj: Any, *, max_depth: int = MAX_DEPTH, max_size: int = MAX_SIZE) -> Any:
    """Encode plain data as JSON-able values. TypeError for unsupported types, ValueError over limits."""
    try:
        return _enc(obj, max_depth, _Budget(max_size))
    except RecursionError:
        raise ValueError("plain data nested too deeply") from None


def _enc_float(x: float) -> Any:
    if math.isfinite(x):
        return x
    return {"float": "nan" if x != x else ("inf" if x > 0 else "-inf")}


def _from_numpy(x: Any, budget: _Budget) -> tuple[bool, Any]:
    """(True, python value) for a numpy scalar or array, else (False, None)."""
    np = sys.modules.get("numpy")
    if np is None or type(x).__module__ != "numpy":
        return False, None
    if isinstance(x, np.ndarray):
        budget.spend(int(x.size) * _NODE_COST)  # before .tolist() materialises it
        return True, x.tolist()
    if isinstance(x, np.generic):
        return True, x.item()
    return False, None


def _enc(x: Any, depth: int, budget: _Budget) -> Any:
    if depth < 0:
        raise ValueError("plain data nested too deeply")
    budget.spend(_NODE_COST)
    t = type(x)
    if x is None or t is bool or t is str:
        if t is str:
            budget.spend(len(x))
        return x
    if t is int:
        if -_SAFE_INT < x < _SAFE_INT:
            return x
        text = hex(x)  # hex is exempt from int<->str digit limits
        budget.spend(len(text))
        return {"int": text}
    if t is float:
        return _enc_float(x)
    if t is complex:
        return {"complex": [_enc_float(x.real), _enc_float(x.imag)]}
    if t is bytes:
        budget.spend((len(x) + 2) // 3 * 4)
        return {"bytes": base64.b64encode(x).decode("ascii")}
    if t is list:
        return [_enc(v, depth - 1, budget) for v in x]
    if t is tuple or t is set or t is frozenset:
        return {t.__name__: [_enc(v, depth - 1, budget) for v in x]}
    if t is dict or t is collections.Counter:
        pairs = [[_enc(k, depth - 1, budget), _enc(v, depth - 1, budget)] for k, v in x.items()]
        return {"dict" if t is dict else "counter": pairs}
    converted, value = _from_numpy(x, budget)
    if converted:
        return _enc(value, depth, budget)
    raise TypeError(f"not plain data: {t.__module__}.{t.__qualname__}")


def dumps(obj: Any, *, max_depth: int = MAX_DEPTH, max_size: int = MAX_SIZE) -> str:
    """``json.dumps(encode(obj))`` in compact, strict (no NaN literals) form."""
    return json.dumps(
        encode(obj, max_depth=max_depth, max_size=max_size), allow_nan=False, separators=(",", ":")
    )


# ---------------------------------------------------------------- decode


def decode(x: Any, *, max_depth: int = MAX_DEPTH, max_size: int = MAX_SIZE) -> Any:
    """Decode what ``encode`` produced (after a JSON round trip). ValueError on anything else."""
    try:
        return _dec(x, max_depth, _Budget(max_size))
    except RecursionError:
        raise ValueError("plain data nested too deeply") from None


def _bad(why: str) -> ValueError:
    return ValueError(f"malformed plain data: {why}")


def _dec_float(x: Any) -> float:
    if type(x) is float and math.isfinite(x):
        return x
    if type(x) is int and -_SAFE_INT < x < _SAFE_INT:  # JSON writers may drop ".0"
        return float(x)
    if type(x) is dict and len(x) == 1 and type(x.get("float")) is str and x["float"] in _NONFINITE:
        # float() makes a fresh NaN object each time. Containers compare items by identity
        # first, so a shared NaN would make [nan] == [nan] True; evalplus' NaNs come from two
        # different computations and compare unequal, and so must ours.
        return float(x["float"])
    raise _bad("expected a float")


def _dec_pairs(v: Any, depth: int, budget: _Budget) -> list[tuple[Any, Any]]:
    if type(v) is not list:
        raise _bad("expected a list of pairs")
    pairs = []
    for p in v:
        if type(p) is not list or len(p) != 2:
            raise _bad("expected a [key, value] pair")
        pairs.append((_dec(p[0], depth - 1, budget), _dec(p[1], depth - 1, budget)))
    return pairs


def _dec(x: Any, depth: int, budget: _Budget) -> Any:
    if depth < 0:
        raise ValueError("plain data nested too deeply")
    budget.spend(_NODE_COST)
    t = type(x)
    if x is None or t is bool:
        return x
    if t is str:
        budget.spend(len(x))
        return x
    if t is int:
        if -_SAFE_INT < x < _SAFE_INT:
            return x
        raise _bad("large int not tagged")
    if t is float:
        if math.isfinite(x):
            return x
        raise _bad("non-finite float not tagged")
    if t is list:
        return [_dec(v, depth - 1, budget) for v in x]
    if t is not dict or len(x) != 1:
        raise _bad(f"unexpected {t.__name__}")
    ((tag, v),) = x.items()
    if tag == "int":
        if type(v) is not str:
            raise _bad("int payload")
        budget.spend(len(v))
        body = v[1:] if v.startswith("-") else v
        if not body.startswith("0x") or not body[2:].isascii() or not body[2:].isalnum():
            raise _bad("int payload")
        try:
            return int(v, 16)
        except ValueError:
            raise _bad("int payload") from None
    if tag == "float":
        return _dec_float(x)
    if tag == "complex":
        if type(v) is not list or len(v) != 2:
            raise _bad("complex payload")
        return complex(_dec_float(v[0]), _dec_float(v[1]))
    if tag == "bytes":
        if type(v) is not str:
            raise _bad("bytes payload")
        budget.spend(len(v))
        try:
            return base64.b64decode(v.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise _bad("bytes payload") from None
    if tag in _SEQ_TAGS:
        if type(v) is not list:
            raise _bad(f"{tag} payload")
        items = [_dec(i, depth - 1, budget) for i in v]
        if tag == "tuple":
            return tuple(items)
        try:
            out = _SEQ_TAGS[tag](items)
        except TypeError:
            raise _bad(f"unhashable {tag} element") from None
        if len(out) != len(items):
            raise _bad(f"duplicate {tag} element")
        return out
    if tag in ("dict", "counter"):
        pairs = _dec_pairs(v, depth, budget)
        try:
            out = dict(pairs) if tag == "dict" else collections.Counter(dict(pairs))
        except TypeError:
            raise _bad("unhashable dict key") from None
        if len(out) != len(pairs):
            raise _bad("duplicate dict key")
        return out
    raise _bad(f"unknown tag {tag!r}")


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH, max_size: int = MAX_SIZE) -> Any:
    """Parse JSON text (strict: no NaN/Infinity literals) and ``decode`` it. ValueError if malformed."""
    if len(text) > max_size:  # json.loads builds everything before decode can count
        raise ValueError("plain data exceeds the size limit")

    def no_constants(name: str) -> Any:
        raise _bad(f"JSON constant {name}")

    try:
        parsed = json.loads(text, parse_constant=no_constants)
    except RecursionError:
        raise ValueError("plain data nested too deeply") from None
    # json.JSONDecodeError and UnicodeDecodeError are ValueErrors already.
    return decode(parsed, max_depth=max_depth, max_size=max_size)


# ---------------------------------------------------------------- digest


def digest(obj: Any) -> str | None:
    """A sha256 of plain data such that, for values without NaN, ``a == b`` iff ``digest(a) == digest(b)``.

    Used to compare large outputs without moving them: numbers that compare equal across types
    (``True == 1 == 1.0 == 1+0j``) share a form, sets and dicts are order-free, lists and tuples
    differ (``[1] != (1,)``), as do str and bytes. None when the value holds a NaN (NaN equals
    nothing) or is not plain data.
    """
    h = hashlib.sha256()
    try:
        _canon(obj, h, MAX_DEPTH)
    except (_NoDigest, TypeError, RecursionError):
        return None
    return h.hexdigest()


class _NoDigest(Exception):
    pass


def _canon_number(x: Any) -> bytes:
    if type(x) is complex:
        if x.imag != 0 or x.imag != x.imag:
            if x.real != x.real or x.imag != x.imag:
                raise _NoDigest
            return b"c" + _canon_number(x.real) + b"," + _canon_number(x.imag) + b";"
        x = x.real
    if type(x) is float:
        if x != x:
            raise _NoDigest
        if math.isinf(x):
            return b"f" + (b"inf" if x > 0 else b"-inf") + b";"
        if not x.is_integer():
            return b"f" + float.hex(x).encode() + b";"
        x = int(x)
    return b"i" + hex(int(x)).encode() + b";"


def _canon(x: Any, h: Any, depth: int) -> None:
    if depth < 0:
        raise _NoDigest
    t = type(x)
    if t is bool or t is int or t is float or t is complex:
        h.update(_canon_number(x))
    elif x is None:
        h.update(b"n;")
    elif t is str:
        b = x.encode("utf-8", "surrogatepass")
        h.update(b"s%d:" % len(b) + b)
    elif t is bytes:
        h.update(b"b%d:" % len(x) + x)
    elif t is list or t is tuple:
        h.update(b"[" if t is list else b"(")
        for v in x:
            _canon(v, h, depth - 1)
        h.update(b"]" if t is list else b")")
    elif t is set or t is frozenset:
        parts = sorted(_sub_digest(v, depth) for v in x)
        h.update(b"{%d:" % len(parts) + b"".join(parts) + b"}")
    elif t is dict or t is collections.Counter:
        parts = sorted(_sub_digest(k, depth) + _sub_digest(v, depth) for k, v in x.items())
        h.update(b"<%d:" % len(parts) + b"".join(parts) + b">")
    else:
        np = sys.modules.get("numpy")
        if np is not None and t.__module__ == "numpy" and isinstance(x, (np.ndarray, np.generic)):
            _canon(x.tolist() if isinstance(x, np.ndarray) else x.item(), h, depth)
        else:
            raise _NoDigest


def _sub_digest(x: Any, depth: int) -> bytes:
    sub = hashlib.sha256()
    _canon(x, sub, depth - 1)
    return sub.digest()
