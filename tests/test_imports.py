"""Every module imports on its own (no hidden import-order cycles inside the package)."""

from __future__ import annotations

import subprocess
import sys

# Runs in a child interpreter: for each module, forget every mongars_edge module already loaded
# (third-party ones stay cached, which keeps this fast) and import that module first.
_CHILD = r"""
import importlib, pkgutil, sys, traceback
import mongars_edge
names = sorted(
    [mongars_edge.__name__]
    + [i.name for i in pkgutil.walk_packages(mongars_edge.__path__, prefix="mongars_edge.")]
)
failed = 0
for name in names:
    for loaded in [m for m in sys.modules if m == "mongars_edge" or m.startswith("mongars_edge.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception:
        failed += 1
        print(f"FAIL {name}: {traceback.format_exc().strip().splitlines()[-1]}")
print(f"checked {len(names)} failed {failed}")
"""


def test_every_module_imports_alone() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _CHILD], capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 0, done.stderr
    last = done.stdout.strip().splitlines()[-1]
    checked, failed = int(last.split()[1]), int(last.split()[3])
    assert checked > 20
    assert failed == 0, done.stdout
