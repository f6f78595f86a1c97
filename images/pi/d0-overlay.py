#!/usr/bin/env python3
"""Writes overlays/bcm2712d0.dtbo: the overlay that turns the kernel's Pi 5 C0 device tree
into its D0 tree, so one boot partition boots both SoC steppings.

Why: the Pi 5 firmware loads bcm2712-rpi-5-b.dtb on every Pi 5 and, on D0 silicon, applies
overlays/bcm2712d0.dtbo on top of it (Raspberry Pi's own trees work that way); config.txt has
no filter for the stepping. Mainline Linux instead ships a separate bcm2712-d-rpi-5-b.dtb. The
two mainline trees differ only in property values (pin controller compatibles and register
sizes, GPIO bank widths and line names, the debug UART's interrupt), which an overlay can set.
This script computes that difference from the kernel's own two files and refuses (exit 1) if
it ever holds something an overlay cannot express: a removed node or property.

    d0-overlay.py C0.dtb D0.dtb OUT.dtbo      (needs dtc, from device-tree-compiler)
"""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

_BEGIN, _END, _PROP, _NOP, _FINISH = 1, 2, 3, 4, 9
Tree = dict[str, dict[str, bytes]]


def parse_fdt(blob: bytes) -> Tree:
    """Every node path of a flattened device tree with its properties (name -> raw value)."""
    magic, _size, off_struct, off_strings = struct.unpack_from(">IIII", blob, 0)
    if magic != 0xD00DFEED:
        raise ValueError("not a flattened device tree (bad magic)")
    tree: Tree = {}
    path: list[str] = []
    pos = off_struct
    while True:
        (token,) = struct.unpack_from(">I", blob, pos)
        pos += 4
        if token == _BEGIN:
            end = blob.index(b"\0", pos)
            name = blob[pos:end].decode()
            pos = (end + 4) & ~3
            path.append(name)
            tree["/" + "/".join(p for p in path if p)] = {}
        elif token == _END:
            path.pop()
        elif token == _PROP:
            length, name_off = struct.unpack_from(">II", blob, pos)
            pos += 8
            name_end = blob.index(b"\0", off_strings + name_off)
            name = blob[off_strings + name_off : name_end].decode()
            tree["/" + "/".join(p for p in path if p)][name] = blob[pos : pos + length]
            pos = (pos + length + 3) & ~3
        elif token == _NOP:
            continue
        elif token == _FINISH:
            return tree
        else:
            raise ValueError(f"bad FDT token {token} at offset {pos - 4}")


def overlay_changes(c0: Tree, d0: Tree) -> dict[str, dict[str, bytes]]:
    """Per node path, the properties to set on C0 to get D0; raises if D0 removes anything."""
    missing = [p for p in c0 if p not in d0]
    added = [p for p in d0 if p not in c0]
    if missing or added:
        raise ValueError(f"the trees differ in nodes (removed {missing}, added {added})")
    changes: dict[str, dict[str, bytes]] = {}
    for path, props in d0.items():
        gone = set(c0[path]) - set(props)
        if gone:
            raise ValueError(f"{path}: D0 removes {sorted(gone)}, which an overlay cannot do")
        for name, value in props.items():
            if c0[path].get(name) != value:
                if name == "phandle" or path.startswith("/__"):
                    raise ValueError(f"{path}: {name} differs; not a plain property change")
                changes.setdefault(path, {})[name] = value
    return changes


def overlay_source(changes: dict[str, dict[str, bytes]]) -> str:
    lines = ["/dts-v1/;", "/plugin/;", "", "/ {", '\tcompatible = "brcm,bcm2712";']
    for number, (path, props) in enumerate(sorted(changes.items())):
        lines += [f"\tfragment@{number} {{", f'\t\ttarget-path = "{path}";', "\t\t__overlay__ {"]
        for name, value in sorted(props.items()):
            lines.append(f"\t\t\t{name} = [{value.hex(' ')}];")
        lines += ["\t\t};", "\t};"]
    lines.append("};")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    c0, d0, out = Path(argv[1]), Path(argv[2]), Path(argv[3])
    try:
        changes = overlay_changes(parse_fdt(c0.read_bytes()), parse_fdt(d0.read_bytes()))
    except (OSError, ValueError) as exc:
        print(f"d0-overlay: {exc}", file=sys.stderr)
        return 1
    if not changes:
        print("d0-overlay: the C0 and D0 trees are identical; nothing to write", file=sys.stderr)
        return 1
    source = overlay_source(changes)
    out.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["dtc", "-q", "-I", "dts", "-O", "dtb", "-o", str(out), "-"],
        input=source.encode(),
        capture_output=True,
        check=False,
    )
    if done.returncode != 0:
        print(f"d0-overlay: dtc failed: {done.stderr.decode(errors='replace')}", file=sys.stderr)
        return 1
    count = sum(len(p) for p in changes.values())
    print(f"d0-overlay: {out}: {count} properties on {len(changes)} nodes", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
