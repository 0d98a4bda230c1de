"""The ``codes.data.io_backend`` package: its ``__init__`` re-exports every public name of its modules' seams, once."""
from __future__ import annotations

import importlib

import pytest

import codes.data.io_backend as iob

MODULES = ('backend', 'disk', 'errors', 'foreign_lmdb', 'format', 'images', 'lmdb_backend', 'lmdb_env')


def test_all_names_resolve():
    assert len(iob.__all__) == len(set(iob.__all__))
    for name in iob.__all__:
        assert getattr(iob, name) is not None, name


@pytest.mark.parametrize('module', MODULES)
def test_module_all_is_defined_there(module):
    mod = importlib.import_module(f'codes.data.io_backend.{module}')
    for name in mod.__all__:
        obj = getattr(mod, name)
        home = getattr(obj, '__module__', None)
        if home is not None and callable(obj):  # a class or function is defined in the module that exports it
            assert home == mod.__name__, f'{module}.{name} comes from {home}'


def test_package_names_are_the_modules_objects():
    homes = {}
    for module in MODULES:
        mod = importlib.import_module(f'codes.data.io_backend.{module}')
        for name in mod.__all__:
            assert name not in homes, f'{name} exported by {homes.get(name)} and {module}'
            homes[name] = mod
    for name in iob.__all__:
        assert name in homes, f'{name} is not exported by any module of the package'
        assert getattr(iob, name) is getattr(homes[name], name)


def test_check_layout():
    from codes.data.io_backend.format import check_layout
    check_layout('db', 'images', None)
    check_layout('db', 'images', ('paired', 'images'))
    with pytest.raises(iob.LmdbFormatError, match=r"layout 'burstsr', this dataset reads 'images' or 'paired' "
                                                  r'\(create_lmdb --format images\)'):
        check_layout('db', 'burstsr', ['images', 'paired'])


def test_lmdb_module_names_do_not_shadow_the_lmdb_library():
    lmdb = pytest.importorskip('lmdb')
    assert hasattr(lmdb, 'open') and not lmdb.__name__.startswith('codes.')
