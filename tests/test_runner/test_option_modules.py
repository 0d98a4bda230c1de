"""The option front end's modules: schema, YAML, validation and command line, and the facade that re-exports them."""
import subprocess
import sys

import pytest

import codes.utils.options as options
from codes.utils import option_cli, option_schema, option_validation, option_yaml
from codes.utils.option_schema import NO_DEFAULT, REQUIRED, Key, as_key


def test_facade_reexports_the_same_objects():
    for module in (option_cli, option_schema, option_validation, option_yaml):
        for name in module.__all__:
            if name in options.__all__:
                assert getattr(options, name) is getattr(module, name), name
    for name in options.__all__:
        assert hasattr(options, name), name


def test_as_key_reads_the_schema_shorthands():
    assert as_key(int) == Key(int)
    assert as_key((str, REQUIRED)) == Key(str, required=True)
    key = Key(float, 1.0, minimum=0)
    assert as_key(key) is key
    assert as_key(('a', 'b')) == Key(('a', 'b'))  # a tuple of choices, not (spec, REQUIRED)


def test_key_default_for_phase():
    key = Key(bool, False, test_default=True)
    assert key.default_for('train') is False and key.default_for(None) is False
    assert key.default_for('test') is True
    assert Key(int).default_for('test') is NO_DEFAULT
    assert Key(int, 3).default_for('test') == 3


def test_to_plain_and_set_by_path():
    assert option_yaml.to_plain({1: (1, 2), 'a': {'b': [(3,)]}}) == {'1': [1, 2], 'a': {'b': [[3]]}}
    tree = {'a': {'b': 1}}
    option_yaml.set_by_path(tree, ['a', 'c', 'd'], 2)
    assert tree == {'a': {'b': 1, 'c': {'d': 2}}}
    with pytest.raises(options.OptionError, match="option 'a.b': is 1, not a mapping"):
        option_yaml.set_by_path(tree, ['a', 'b', 'x'], 0, 'f.yml')


def test_modules_import_no_component():
    code = ('import sys; import codes.utils.options, codes.utils.option_cli; '
            "bad = [m for m in sys.modules if m.split('.')[0] == 'torch' or m.startswith(('codes.archs', "
            "'codes.models', 'codes.data', 'codes.losses', 'codes.metrics'))]; print(bad); assert not bad")
    subprocess.run([sys.executable, '-c', code], check=True)
