"""``codes/utils`` is the ground floor: none of its modules imports another part of ``codes`` (architectures,
data, models, ...), so a broken upper layer cannot take the helpers every layer uses down with it."""
from __future__ import annotations

import ast
from pathlib import Path

UTILS = Path(__file__).resolve().parents[2] / 'codes' / 'utils'


def _imported_modules(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.append(node.module)
    return names


def test_codes_utils_imports_no_layer_above_it():
    upward = [f'{path.name}: {name}' for path in sorted(UTILS.glob('*.py')) for name in _imported_modules(path)
              if name.startswith('codes.') and not name.startswith('codes.utils')]
    assert len(list(UTILS.glob('*.py'))) > 10  # the folder was found
    assert upward == []
