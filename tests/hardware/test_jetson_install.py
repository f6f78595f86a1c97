"""images/jetson/gpu-wheels.sh decides on recorded Jetson sysroots, with pip's recorded answers.

The script runs for real (sh, sed, awk); only the venv's `pip` is a stand-in (NVIDIA's index and
an aarch64 wheel cannot be reached or installed here) that logs its arguments and answers with
output recorded from pip 25.3. Its `python3` answers the Python tag, and gives the check's output
built from a recorded provider list, or is this machine's real Python running the real check.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "images" / "jetson" / "gpu-wheels.sh"
PINS = REPO / "images" / "jetson" / "gpu-wheels.txt"
FIXTURES = REPO / "tests" / "fixtures"
SYSROOTS = FIXTURES / "sysroots"
JETSON = FIXTURES / "jetson"
SHA_1_24 = "d980b934b9a29c1a9d6f39751edd7662b69fadd75556a10ff363773a58ce0950"

_FAKE_PIP = """#!/bin/sh
echo "pip $*" >> "$FAKE_LOG"
case "$1" in
  download)
    prev=""; dest=""; req=""
    for a in "$@"; do
      [ "$prev" = "-d" ] && dest="$a"
      [ "$prev" = "-r" ] && req="$a"
      prev="$a"
    done
    sed 's/^/requirement /' "$req" >> "$FAKE_LOG"
    if [ -n "${FAKE_DOWNLOAD_FAILS:-}" ]; then cat "$FAKE_DOWNLOAD_FAILS"; exit 1; fi
    mkdir -p "$dest" && : > "$dest/onnxruntime_gpu-1.24.0-cp310-cp310-linux_aarch64.whl" ;;
  show) cat "$FAKE_SHOW" ;;
  install) case "$*" in *--no-index*) [ -z "${FAKE_INSTALL_FAILS:-}" ] || exit 1 ;; esac ;;
esac
exit 0
"""
_FAKE_PYTHON = """#!/bin/sh
case "$1" in
  -c) echo "$FAKE_TAG" ;;
  -m) cat "$FAKE_CHECK" ;;
esac
"""


@dataclass
class Run:
    code: int
    out: str
    pip: list[str]


def _venv(tmp_path: Path, *, real_python: bool = False) -> Path:
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "pip").write_text(_FAKE_PIP, encoding="utf-8")
    # The real one through a wrapper: a symlink would lose the venv that has onnxruntime.
    python = f'#!/bin/sh\nexec "{sys.executable}" "$@"\n' if real_python else _FAKE_PYTHON
    (bin_dir / "python3").write_text(python, encoding="utf-8")
    for exe in bin_dir.iterdir():
        exe.chmod(0o755)
    return tmp_path / "venv"


def _check_output(tmp_path: Path, providers: str, session: str, ct2: str = "0") -> Path:
    present = json.loads((JETSON / "providers" / providers).read_text(encoding="utf-8"))
    path = tmp_path / "check.txt"
    path.write_text(
        f"package=onnxruntime-gpu 1.24.0\npresent={','.join(present)}\n"
        f"cuda_session={session}\nctranslate2_cuda_devices={ct2}\n",
        encoding="utf-8",
    )
    return path


def _run(
    tmp_path: Path,
    sysroot: Path,
    *,
    tag: str = "cp310",
    check: Path | None = None,
    pins: Path = PINS,
    real_python: bool = False,
    download_fails: str | None = None,
    install_fails: bool = False,
) -> Run:
    venv = _venv(tmp_path, real_python=real_python)
    log = tmp_path / "pip.log"
    log.touch()
    env = {
        "PATH": os.environ["PATH"],
        "ROOT": str(sysroot),
        "VENV": str(venv),
        "PINS": str(pins),
        "FAKE_LOG": str(log),
        "FAKE_TAG": tag,
        "FAKE_CHECK": str(check or tmp_path / "none"),
        "FAKE_SHOW": str(JETSON / "pip" / "show-onnxruntime.txt"),
        "PYTHONPATH": str(REPO),
    }
    if install_fails:
        env["FAKE_INSTALL_FAILS"] = "1"
    if download_fails:
        env["FAKE_DOWNLOAD_FAILS"] = str(JETSON / "pip" / download_fails)
    done = subprocess.run(
        ["sh", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=120, check=False
    )
    return Run(done.returncode, done.stdout + done.stderr, log.read_text().splitlines())


def test_jetpack_6_2_with_its_python_gets_the_pinned_gpu_wheel(tmp_path: Path) -> None:
    check = _check_output(
        tmp_path, "onnxruntime-gpu-1.24.0-jp6-cu126.json", "CUDAExecutionProvider"
    )
    run = _run(tmp_path, SYSROOTS / "jetson-agx-orin-64gb", check=check)
    assert run.code == 0, run.out
    assert "board: L4T R36, CUDA 12.6, TensorRT 10.3.0; the app's Python: cp310" in run.out
    download = next(line for line in run.pip if line.startswith("pip download"))
    assert "--require-hashes" in download and "--no-deps" in download
    assert "--index-url https://pypi.jetson-ai-lab.io/jp6/cu126 " in download
    assert f"requirement onnxruntime-gpu==1.24.0 --hash=sha256:{SHA_1_24}" in run.pip
    # The CPU package goes only after the pinned file is down, and the GPU one comes from it.
    calls = [line.split()[1] for line in run.pip if line.startswith("pip ")]
    assert calls == ["download", "show", "uninstall", "install"]
    install = run.pip[-1]
    assert "--no-index" in install and "--require-hashes" in install
    assert "TensorRT provider present" in run.out
    assert "CTranslate2 (speech-to-text) stays on the CPU" in run.out


def test_the_apps_python_3_11_has_no_nvidia_wheel_and_stays_on_the_cpu(tmp_path: Path) -> None:
    run = _run(tmp_path, SYSROOTS / "jetson-agx-orin-64gb", tag="cp311")
    assert run.code == 3, run.out
    assert "no pinned onnxruntime-gpu for L4T R36 with CUDA 12.6 and Python cp311" in run.out
    pinned = "onnxruntime-gpu 1.24.0 (CUDA 12.6, cp310); onnxruntime-gpu 1.23.0 (CUDA 12.9, cp312)"
    assert pinned in run.out
    assert run.pip == []  # nothing asked of pip, nothing changed


def test_jetpack_6_0s_cuda_12_2_has_no_pin(tmp_path: Path) -> None:
    run = _run(tmp_path, SYSROOTS / "jetson-orin-nano-8gb")
    assert run.code == 3
    assert "CUDA 12.2" in run.out and "TensorRT 8.6.2" in run.out
    assert run.pip == []


def test_cuda_12_9_with_python_3_12_takes_the_cu129_row(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(SYSROOTS / "jetson-agx-orin-64gb", root, symlinks=True)
    (root / "usr/local/cuda").unlink()
    (root / "usr/local/cuda-12.9").mkdir()
    (root / "usr/local/cuda").symlink_to("cuda-12.9")  # no version.json: read from the link
    check = _check_output(
        tmp_path, "onnxruntime-gpu-1.24.0-jp6-cu126.json", "CUDAExecutionProvider"
    )
    run = _run(tmp_path, root, tag="cp312", check=check)
    assert run.code == 0, run.out
    assert any("--index-url https://pypi.jetson-ai-lab.io/jp6/cu129 " in line for line in run.pip)
    assert any(
        line.startswith("requirement onnxruntime-gpu==1.23.0 --hash=sha256:2e3a07")
        for line in run.pip
    )


def test_a_file_with_another_sha256_is_refused_and_nothing_changes(tmp_path: Path) -> None:
    run = _run(
        tmp_path, SYSROOTS / "jetson-agx-orin-64gb", download_fails="download-hash-mismatch.txt"
    )
    assert run.code == 3
    assert "pip: ERROR: THESE PACKAGES DO NOT MATCH THE HASHES" in run.out
    assert "another sha256 than the pinned one: refused" in run.out
    assert [line.split()[1] for line in run.pip if line.startswith("pip ")] == ["download"]


def test_an_unreachable_or_unmatched_index_says_rerun(tmp_path: Path) -> None:
    run = _run(
        tmp_path,
        SYSROOTS / "jetson-agx-orin-64gb",
        download_fails="download-no-matching-python.txt",
    )
    assert run.code == 3
    assert "could not download onnxruntime-gpu 1.24.0" in run.out and "rerun" in run.out


def test_a_wheel_that_does_not_open_cuda_is_rolled_back(tmp_path: Path) -> None:
    """The real check on this machine's real (CPU) onnxruntime: no CUDA, so the CPU one returns."""
    pins = tmp_path / "pins.txt"
    tag = f"cp{sys.version_info[0]}{sys.version_info[1]}"
    pins.write_text(f"R36 jp6/cu126 12.6 {tag} onnxruntime-gpu 1.24.0 {SHA_1_24}\n")
    run = _run(tmp_path, SYSROOTS / "jetson-agx-orin-64gb", pins=pins, real_python=True)
    assert run.code == 3, run.out
    assert re.search(
        r"providers present: .*CPUExecutionProvider; a model asked for CUDA opened on: nothing",
        run.out,
    )
    assert "did not open a model on CUDA here; onnxruntime 1.31.1 is back" in run.out
    assert run.pip[-2:] == [
        "pip uninstall --quiet -y onnxruntime-gpu",
        "pip install --quiet onnxruntime==1.31.1",
    ]


@pytest.mark.parametrize("sha", ["", "d980b934", "Z" * 64])
def test_a_pin_without_a_full_sha256_refuses_to_install(tmp_path: Path, sha: str) -> None:
    pins = tmp_path / "pins.txt"
    pins.write_text(f"R36 jp6/cu126 12.6 cp310 onnxruntime-gpu 1.24.0 {sha}\n")
    run = _run(tmp_path, SYSROOTS / "jetson-agx-orin-64gb", pins=pins)
    # An empty sha leaves a row of 6 fields: no row matches, so nothing is installed either.
    assert run.code == (3 if not sha else 1), run.out
    assert run.pip == []
    if sha:
        assert "refusing to install unpinned" in run.out


@pytest.mark.parametrize("sysroot", ["pi5-8gb", "x86-vm-amx"])
def test_not_a_jetson(tmp_path: Path, sysroot: str) -> None:
    run = _run(tmp_path, SYSROOTS / sysroot)
    assert run.code == 3 and "not a Jetson" in run.out


def test_no_cuda_toolkit_says_install_jetpack(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(SYSROOTS / "jetson-agx-orin-64gb", root, symlinks=True)
    (root / "usr/local/cuda").unlink()
    run = _run(tmp_path, root)
    assert run.code == 3 and "sudo apt install nvidia-jetpack" in run.out


def test_every_pin_is_a_full_sha256_matching_the_index_url_it_came_from() -> None:
    """devpi file URLs are +f/<sha256[:3]>/<sha256[3:16]>/<file>: the comment and the row agree."""
    text = PINS.read_text(encoding="utf-8")
    rows = [line.split() for line in text.splitlines() if line and not line.startswith("#")]
    urls = re.findall(r"(jp6/cu\d+)/\+f/([0-9a-f]{3})/([0-9a-f]{13})/\s*#?\s*(\S+\.whl)", text)
    assert len(rows) == len(urls) == 2
    for row in rows:
        _l4t, index, cuda, tag, package, version, sha = row
        assert re.fullmatch(r"[0-9a-f]{64}", sha)
        assert index == f"jp6/cu{cuda.replace('.', '')}"
        wheel = f"{package.replace('-', '_')}-{version}-{tag}-{tag}-linux_aarch64.whl"
        assert (index, sha[:3], sha[3:16], wheel) in urls


def _root(tmp_path: Path, name: str = "jetson-agx-orin-64gb") -> Path:
    root = tmp_path / "root"
    shutil.copytree(SYSROOTS / name, root, symlinks=True)
    return root


def test_a_garbled_release_file_is_an_unknown_l4t(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "etc/nv_tegra_release").write_bytes(b"\x00\xffR36 release?\n")
    run = _run(tmp_path, root)
    assert run.code == 3 and "unknown L4T release" in run.out
    assert run.pip == []


def test_a_garbled_version_json_falls_back_to_the_cuda_link(tmp_path: Path) -> None:
    root = _root(tmp_path)
    (root / "usr/local/cuda-12.6/version.json").write_text('{"cuda": "twelve"', encoding="utf-8")
    check = _check_output(
        tmp_path, "onnxruntime-gpu-1.24.0-jp6-cu126.json", "CUDAExecutionProvider"
    )
    run = _run(tmp_path, root, check=check)
    assert run.code == 0, run.out
    assert "CUDA 12.6" in run.out


def test_a_newer_l4t_line_has_no_pin_yet(tmp_path: Path) -> None:
    """JetPack 7 (L4T R38) is not in the pin list: it says so rather than guess a wheel."""
    root = _root(tmp_path)
    release = root / "etc/nv_tegra_release"
    release.write_text(release.read_text().replace("# R36 (release)", "# R38 (release)"))
    run = _run(tmp_path, root)
    assert run.code == 3
    assert "no pinned onnxruntime-gpu for L4T R38" in run.out and "pinned for R38: none" in run.out


def test_without_tensorrt_it_says_cuda_still_can(tmp_path: Path) -> None:
    root = _root(tmp_path)
    shutil.rmtree(root / "usr/lib/aarch64-linux-gnu")
    check = _check_output(
        tmp_path, "onnxruntime-gpu-1.24.0-jp6-cu126.json", "CUDAExecutionProvider", ct2=""
    )
    run = _run(tmp_path, root, check=check)
    assert run.code == 0, run.out
    assert "TensorRT none" in run.out and "the TensorRT provider cannot load, CUDA can" in run.out
    assert "CTranslate2" not in run.out  # not installed in this venv: nothing said about it


def test_an_install_that_fails_puts_the_cpu_package_back(tmp_path: Path) -> None:
    run = _run(tmp_path, SYSROOTS / "jetson-agx-orin-64gb", install_fails=True)
    assert run.code == 3, run.out
    assert "pip could not install the downloaded onnxruntime-gpu 1.24.0" in run.out
    assert run.pip[-2:] == [
        "pip uninstall --quiet -y onnxruntime-gpu",
        "pip install --quiet onnxruntime==1.31.1",
    ]
