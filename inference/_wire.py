"""Plain values across the sandbox boundary: the only thing that crosses between a sample's code
and the trusted tests (inference.verdict). Standard library only, no kit imports: the same source
runs inside the sandbox (embedded into the sample's program) and in the trusted judge.

A value is encoded as JSON; the Python types JSON lacks are one-key objects whose key starts with
"$" ({"$tuple": [...]}, {"$dict": [[k, v], ...]}, ...; every dict is a "$dict", so no user key can
be taken for a tag). Decoding builds only None, bool, int, float, complex, str, bytes, list, tuple,
dict, set and frozenset: no pickle, no constructor chosen by the sender, so whatever the untrusted
side sends, the trusted side holds plain data whose == and hash are Python's own (an object with
an `__eq__` that always says True cannot cross).
"""

from __future__ import annotations

import _json
import math

MAX_DEPTH = 200  # nesting of containers (a deeper value is refused rather than recursed into)
_BIG = 1 << 62  # ints beyond this travel as hex: decimal str->int is capped at 4300 digits


class WireError(ValueError):
    """A value that cannot cross the boundary (encode) or a malformed message (decode)."""


def encode(value: object, depth: int = 0) -> object:
    """A JSON-serializable form of a plain value; WireError naming the type for anything else.

    Subclasses of the plain types (a namedtuple, an OrderedDict, a str subclass) go as their base
    type: what crosses is the value, never the class or its methods.
    """
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    if value is None or value is True or value is False:
        return value
    if isinstance(value, bool):
        return bool(value)
    if isinstance(value, int):
        v = int.__index__(value)
        return v if -_BIG < v < _BIG else {"$int": format(v, "x")}
    if isinstance(value, float):
        v = float.__float__(value)
        return v if math.isfinite(v) else {"$float": repr(v)}
    if isinstance(value, str):
        return str.__str__(value)
    if isinstance(value, complex):
        return {"$complex": [encode(value.real, depth + 1), encode(value.imag, depth + 1)]}
    if isinstance(value, (bytes, bytearray)):
        return {"$bytes": bytes(value).hex()}
    if isinstance(value, list):
        return [encode(v, depth + 1) for v in list.__iter__(value)]
    if isinstance(value, tuple):
        return {"$tuple": [encode(v, depth + 1) for v in tuple.__iter__(value)]}
    if isinstance(value, dict):
        return {"$dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in dict.items(value)]}
    if isinstance(value, frozenset):
        return {"$frozenset": [encode(v, depth + 1) for v in frozenset.__iter__(value)]}
    if isinstance(value, set):
        return {"$set": [encode(v, depth + 1) for v in set.__iter__(value)]}
    raise WireError(
        f"a value of type {type(value).__name__}, which cannot cross the sandbox boundary (plain values only)"
    )


def _hashable(v: object) -> object:
    try:
        hash(v)
    except TypeError:
        raise WireError(f"unhashable {type(v).__name__} as a dict key or set member") from None
    return v


def decode(obj: object, depth: int = 0) -> object:
    """The plain value of an encoded form (the inverse of encode); WireError if malformed."""
    if depth > MAX_DEPTH:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    t = type(obj)
    if obj is None or t in (bool, int, str):
        return obj
    if t is float:
        if not math.isfinite(obj):  # NaN/Infinity literals: only the tagged form is valid
            raise WireError("non-finite float outside a $float tag")
        return obj
    if t is list:
        return [decode(v, depth + 1) for v in obj]
    if t is not dict or len(obj) != 1:
        raise WireError(f"malformed value: {type(obj).__name__} {str(obj)[:80]}")
    ((tag, v),) = obj.items()
    d = depth + 1
    if tag == "$tuple" and type(v) is list:
        return tuple(decode(x, d) for x in v)
    if tag == "$dict" and type(v) is list:
        out = {}
        for pair in v:
            if type(pair) is not list or len(pair) != 2:
                raise WireError("malformed $dict entry")
            out[_hashable(decode(pair[0], d))] = decode(pair[1], d)
        return out
    if tag in ("$set", "$frozenset") and type(v) is list:
        items = [_hashable(decode(x, d)) for x in v]
        return set(items) if tag == "$set" else frozenset(items)
    if tag == "$int" and type(v) is str:
        try:
            return int(v, 16)
        except ValueError:
            raise WireError("malformed $int") from None
    if tag == "$float" and v in ("nan", "inf", "-inf"):
        return float(v)
    if tag == "$bytes" and type(v) is str:
        try:
            return bytes.fromhex(v)
        except ValueError:
            raise WireError("malformed $bytes") from None
    if tag == "$complex" and type(v) is list and len(v) == 2:
        re, im = (decode(x, d) for x in v)
        if type(re) is not float or type(im) is not float:
            raise WireError("malformed $complex")
        return complex(re, im)
    raise WireError(f"unknown or malformed tag {str(tag)[:40]!r}")


# JSON through the interpreter's C scanner (`_json`) rather than the `json` package: importing
# `json` pulls in `re` and `enum`, 13 ms of start-up in each of the two processes per sample.


class _ScanContext:
    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    memo: dict = {}

    @staticmethod
    def parse_constant(name: str) -> object:
        raise WireError(f"bare {name} in a message")


_scan = _json.make_scanner(_ScanContext())


def loads(line: str | bytes) -> object:
    """One JSON document; NaN/Infinity literals refused (non-finite floats must arrive tagged)."""
    text = line.decode("utf-8", errors="replace") if isinstance(line, (bytes, bytearray)) else line
    text = text.strip(" \t\r\n")
    try:
        obj, end = _scan(text, 0)
    except StopIteration:
        raise WireError("not a JSON message") from None
    except RecursionError:
        raise WireError("message nested too deeply") from None
    except ValueError as e:  # json.JSONDecodeError
        raise WireError(f"not a JSON message ({e})") from None
    if end != len(text):
        raise WireError("extra data after a JSON message")
    return obj


def dumps(value: object) -> str:
    """One line of JSON (no raw newlines: messages are newline-delimited) of an encoded form:
    None, bool, int, finite float, str, list, and dicts with str keys."""
    out: list[str] = []
    _dump(value, out, 0)
    return "".join(out)


def _dump(v: object, out: list[str], depth: int) -> None:
    if depth > MAX_DEPTH + 4:
        raise WireError(f"value nested deeper than {MAX_DEPTH} levels")
    if v is None:
        out.append("null")
    elif v is True:
        out.append("true")
    elif v is False:
        out.append("false")
    elif type(v) is int:
        out.append(int.__repr__(v))
    elif type(v) is float:
        if not math.isfinite(v):
            raise WireError("non-finite float outside a $float tag")
        out.append(float.__repr__(v))
    elif type(v) is str:
        out.append(_json.encode_basestring_ascii(v))
    elif type(v) is list:
        out.append("[")
        for i, x in enumerate(v):
            if i:
                out.append(",")
            _dump(x, out, depth + 1)
        out.append("]")
    elif type(v) is dict:
        out.append("{")
        for i, (k, x) in enumerate(v.items()):
            if type(k) is not str:
                raise WireError("a message key that is not a string")
            out.append(("," if i else "") + _json.encode_basestring_ascii(k) + ":")
            _dump(x, out, depth + 1)
        out.append("}")
    else:
        raise WireError(f"cannot write a {type(v).__name__} into a message")
