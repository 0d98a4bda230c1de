"""coerce_value: each hinted type's conversion and its message."""
from typing import Any, Literal, Mapping, Sequence

import pytest

from codes.utils.build import OptionError, coerce_value


@pytest.mark.parametrize('value, tp, expected', [
    ('1e-4', float, 1e-4), (2, float, 2.0), (3.0, int, 3), ('3', int, 3), ('4.0', int, 4), (True, bool, True),
    ('a', str, 'a'), (None, int | None, None), ('2', int | None, 2), ([1, '2'], list[int], [1, 2]),
    ([1, 2], tuple[int, int], (1, 2)), ([1, 2, 3], tuple[float, ...], (1.0, 2.0, 3.0)), ((1, 2), Sequence[int], [1, 2]),
    ({'a': 1}, Mapping[str, Any], {'a': 1}), ('b', Literal['a', 'b'], 'b'), (object, Any, object),
])
def test_converts(value, tp, expected):
    out = coerce_value(value, tp, 'k')
    assert out == expected and type(out) is type(expected)


@pytest.mark.parametrize('value, tp, message', [
    (True, float, "option 'k': expected a number, got True"),
    ('x', float, "option 'k': expected a number, got 'x' (str)"),
    (2.5, int, "option 'k': expected an integer, got 2.5 (float)"),
    (True, int, "option 'k': expected an integer, got True (bool)"),
    (1, bool, "option 'k': expected true or false, got 1"),
    (1, str, "option 'k': expected a string, got 1 (int)"),
    ('x', int | None, "option 'k': expected an integer, got 'x' (str)"),  # Optional[X]: X's own message
    ([1], int | str, "option 'k': expected int | str, got [1] (list)"),
    (1, list[int], "option 'k': expected a list, got 1 (int)"),
    ([1, 'x'], list[int], "option 'k[1]': expected an integer, got 'x' (str)"),
    ([1], tuple[int, int], "option 'k': expected 2 values, got 1"),
    ([1], dict[str, int], "option 'k': expected a mapping, got [1]"),
    ([1], dict, "option 'k': expected dict, got [1] (list)"),
    ('c', Literal['a', 'b'], "option 'k': expected one of ['a', 'b'], got 'c'"),
    ('x', bytes, "option 'k': expected bytes, got 'x' (str)"),
])
def test_refuses_with_the_key_path(value, tp, message):
    with pytest.raises(OptionError) as info:
        coerce_value(value, tp, 'k')
    assert str(info.value) == message
