import collections
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tinyforge import plaindata
from tinyforge.plaindata import decode, dumps, encode, loads

SAMPLES = [
    None,
    True,
    False,
    0,
    -1,
    2**53 - 1,
    2**53,
    -(2**53),
    10**400,
    -(10**5000),  # beyond the int<->str digit limit of Python 3.11
    0.0,
    -0.0,
    1.5,
    1e300,
    5e-324,
    math.inf,
    -math.inf,
    1 + 2j,
    complex(-0.0, math.inf),
    "",
    "héllo \x00 \ud800 ✓",
    b"",
    b"\x00\xff bytes",
    [],
    [1, [2, [3, []]]],
    (),
    (1,),
    (1, "a", (2.5, None)),
    set(),
    {1, "a", (2, 3), frozenset({4})},
    frozenset(),
    frozenset({1.5, b"x"}),
    {},
    {"b": 1, "a": 2},
    {1: "int", 1.5: "float", (1, 2): "tuple", None: [], frozenset({1}): {}, b"k": True},
    collections.Counter("abracadabra"),
    [{"x": ({1, 2}, [b"", 3j])}],
]


def round_trip(x):
    return loads(dumps(x))


def same(a, b) -> bool:
    """Equality that also checks exact types, NaN, the sign of zero and dict order."""
    if type(a) is not type(b):
        return False
    if type(a) is float:
        return (math.isnan(a) and math.isnan(b)) or (a == b and math.copysign(1, a) == math.copysign(1, b))
    if type(a) is complex:
        return same(a.real, b.real) and same(a.imag, b.imag)
    if type(a) in (list, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) in (dict, collections.Counter):
        return list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    return a == b


@pytest.mark.parametrize("x", SAMPLES, ids=lambda x: type(x).__name__)
def test_round_trip(x) -> None:
    assert same(round_trip(x), x)
    assert same(decode(json.loads(json.dumps(encode(x), allow_nan=False))), x)


def test_nan_and_negative_zero() -> None:
    y = round_trip([math.nan, -0.0, complex(math.nan, -0.0)])
    assert math.isnan(y[0])
    assert math.copysign(1, y[1]) == -1
    assert math.isnan(y[2].real) and math.copysign(1, y[2].imag) == -1


def test_bool_is_not_int_and_int_is_not_float() -> None:
    assert [type(v) for v in round_trip([True, 1, 1.0, 0, False, 0.0])] == [
        bool,
        int,
        float,
        int,
        bool,
        float,
    ]
    assert round_trip({True: 1, 2: 2.0}) == {True: 1, 2: 2.0}
    assert type(next(iter(round_trip({True: 1})))) is bool


def test_numpy_values_become_python_data() -> None:
    assert same(round_trip(np.float64(0.5)), 0.5)
    assert same(round_trip(np.int64(-3)), -3)
    assert same(round_trip(np.bool_(True)), True)
    assert same(round_trip(np.array([[1, 2], [3, 4]])), [[1, 2], [3, 4]])
    assert same(round_trip([np.float32(0.25), np.array([1.5])]), [0.25, [1.5]])
    assert same(round_trip(np.complex128(1 - 1j)), 1 - 1j)
    with pytest.raises(ValueError):
        encode(np.zeros(1000), max_size=100)  # checked before .tolist()
    with pytest.raises(TypeError, match="datetime"):
        encode(np.datetime64("2020-01-01T00:00:00"))


class MyInt(int):
    pass


class Liar(str):
    def __eq__(self, other):
        return True

    __hash__ = str.__hash__


class Point(collections.namedtuple("Point", "x y")):
    pass


@pytest.mark.parametrize(
    "x",
    [
        MyInt(3),
        Liar("x"),
        [1, Liar("x")],
        Point(1, 2),
        collections.OrderedDict(a=1),
        collections.defaultdict(int),
        object(),
        print,
        range(3),
        bytearray(b"x"),
        iter([1]),
        {1: Liar("x")},
        {Liar("k"): 1},
    ],
    ids=lambda x: type(x).__name__,
)
def test_rejects_non_plain_types(x) -> None:
    with pytest.raises(TypeError, match="not plain data"):
        encode(x)


def test_rejection_names_the_type() -> None:
    with pytest.raises(TypeError, match=r"test_plaindata\.MyInt"):
        encode(MyInt(1))


def test_depth_and_size_limits() -> None:
    deep: list = []
    for _ in range(plaindata.MAX_DEPTH):
        deep = [deep]
    assert round_trip(deep) == deep
    with pytest.raises(ValueError, match="deep"):
        encode([deep])
    cyclic: list = []
    cyclic.append(cyclic)
    with pytest.raises(ValueError, match="deep"):
        encode(cyclic)
    with pytest.raises(ValueError, match="size"):
        encode("x" * 101, max_size=100)
    with pytest.raises(ValueError, match="size"):
        encode(list(range(200)), max_size=100)
    with pytest.raises(ValueError, match="size"):
        decode(["x" * 101], max_size=100)
    with pytest.raises(ValueError, match="size"):
        loads("[" + "0," * 100 + "0]", max_size=150)  # refused before parsing
    huge = 2 ** (7**9) + 3  # HumanEval+/160 has a 2 ** 7 ** 10 + 3
    assert round_trip(huge) == huge


@pytest.mark.parametrize(
    "text",
    [
        "NaN",
        "[Infinity]",
        "-Infinity",
        "1e999",  # parses to inf
        "9007199254740993",  # a big int must be tagged
        "1" * 5000,  # beyond the int digit limit
        "{}",
        '{"a": 1, "b": 2}',
        '{"evil": []}',
        '{"tuple": 1}',
        '{"set": [[1]]}',  # unhashable element
        '{"set": [1, 1.0]}',  # duplicate
        '{"dict": [[[1], 2]]}',  # unhashable key
        '{"dict": [[1, 2], [1, 3]]}',  # duplicate key
        '{"dict": [[1]]}',
        '{"dict": {"a": 1}}',
        '{"int": "12"}',
        '{"int": "0x 1"}',
        '{"int": "0x_1"}',
        '{"int": "0x"}',
        '{"int": 5}',
        '{"float": "NaN"}',
        '{"float": 1.0}',
        '{"complex": [1.0]}',
        '{"complex": ["a", 1.0]}',
        '{"bytes": "!!!"}',
        '{"bytes": 3}',
        '{"counter": [[{"set": []}, 1]]}',
        "[" * 100_000 + "]" * 100_000,
        '{"tuple": ' * 500 + "[]" + "}" * 500,
        "[1,",
        b"\xff\xfe",
    ],
    ids=lambda t: str(t)[:30],
)
def test_loads_rejects_hostile_input(text) -> None:
    with pytest.raises(ValueError):
        loads(text)


@pytest.mark.parametrize("x", [object(), print, (1, 2), {1: 2}, b"x", 1 + 1j, np.int64(1), MyInt(1), 2**70])
def test_decode_accepts_only_json_values(x) -> None:
    with pytest.raises(ValueError):
        decode(x)


def test_decoded_values_have_exact_builtin_types() -> None:
    text = (
        '[{"dict": [[{"tuple": [1, "a"]}, {"frozenset": [2]}]]}, {"counter": [["a", 2]]}, {"int": "-0xff"}]'
    )
    value = loads(text)
    assert value == [{(1, "a"): frozenset({2})}, collections.Counter(a=2), -255]
    assert type(value[1]) is collections.Counter


def test_standalone_import_by_path_without_numpy() -> None:
    """The sandbox loads the module by file path, with only the standard library."""
    path = Path(plaindata.__file__)
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('pd', {str(path)!r})\n"
        "pd = importlib.util.module_from_spec(spec); spec.loader.exec_module(pd)\n"
        "assert 'numpy' not in sys.modules and 'tinyforge' not in sys.modules\n"
        "print(pd.dumps([1, (2.5, {3}), b'x']))\n"
    )
    out = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, check=True)
    assert loads(out.stdout) == [1, (2.5, {3}), b"x"]
    assert importlib.util.find_spec("tinyforge.plaindata") is not None
