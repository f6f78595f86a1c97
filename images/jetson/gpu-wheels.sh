#!/bin/sh
# Gives the app's ONNX models (voices, embedder) the Jetson's GPU: replaces PyPI's CPU-only
# onnxruntime in the venv by NVIDIA's onnxruntime-gpu (CUDA and TensorRT providers) when a row
# of gpu-wheels.txt fits this board's L4T, CUDA and the venv's Python, pinned by version and
# sha256. Then checks that CUDA really opens a model, and puts the CPU package back if not.
#
# Exit status: 0 the GPU wheel is in and works; 3 the models stay on the CPU (said why, nothing
# broken: the box runs as before); anything else, an error. Rerun it any time (as root).
# ROOT (default /) is where the board's files are read: tests point it at recorded sysroots.
set -eu
ROOT="${ROOT:-/}"
VENV="${VENV:-/opt/mongars-edge/venv}"
PINS="${PINS:-$(dirname "$0")/gpu-wheels.txt}"
INDEX="${INDEX:-https://pypi.jetson-ai-lab.io}"
PIP="$VENV/bin/pip"
PY="$VENV/bin/python3"

say() { echo "==> $*"; }
stay_on_cpu() {
  echo "==> ONNX Runtime stays on the CPU: $*"
  echo "    (the box works; /health lists this until the GPU wheel is in)"
  exit 3
}

# --- the board's facts -----------------------------------------------------------------------
release="$ROOT/etc/nv_tegra_release"
[ -f "$release" ] || stay_on_cpu "$release is missing: this is not a Jetson with L4T"
l4t=$(sed -n 's/^# R\([0-9][0-9]*\) (release).*/R\1/p' "$release" | head -n 1)
[ -n "$l4t" ] || stay_on_cpu "$release has no '# R<n> (release)' line: unknown L4T release"

cuda=""
if [ -f "$ROOT/usr/local/cuda/version.json" ]; then
  # {"cuda" : {"name" : "CUDA SDK", "version" : "12.6.11"}, ...}: the first version is the SDK's.
  cuda=$(tr -d '\n' < "$ROOT/usr/local/cuda/version.json" \
    | sed -n 's/.*"cuda" *: *{[^}]*"version" *: *"\([0-9][0-9]*\.[0-9][0-9]*\).*/\1/p')
fi
if [ -z "$cuda" ] && [ -L "$ROOT/usr/local/cuda" ]; then
  cuda=$(basename "$(readlink "$ROOT/usr/local/cuda")" | sed -n 's/^cuda-\([0-9][0-9]*\.[0-9][0-9]*\)$/\1/p')
fi
[ -n "$cuda" ] || stay_on_cpu "no CUDA toolkit in $ROOT/usr/local/cuda: sudo apt install nvidia-jetpack, then rerun $0"

trt=$(ls "$ROOT"/usr/lib/aarch64-linux-gnu/libnvinfer.so.* 2>/dev/null | sed -n 's/.*libnvinfer\.so\.\([0-9.]*\)$/\1/p' | sort -t. -k1,1n -k2,2n -k3,3n | tail -n 1)
[ -x "$PY" ] || { echo "no app venv at $VENV: run install-app.sh first" >&2; exit 1; }
tag=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
say "board: L4T $l4t, CUDA $cuda, TensorRT ${trt:-none}; the app's Python: $tag"
[ -n "$trt" ] || echo "    no TensorRT (libnvinfer) on this board: the TensorRT provider cannot load, CUDA can (sudo apt install nvidia-jetpack)"

# --- the pinned wheel for these facts ----------------------------------------------------------
[ -f "$PINS" ] || { echo "pin list $PINS is missing" >&2; exit 1; }
row=$(awk -v l="$l4t" -v c="$cuda" -v t="$tag" \
  '!/^#/ && NF >= 7 && $1 == l && $3 == c && $4 == t && $5 == "onnxruntime-gpu" { print; exit }' "$PINS")
if [ -z "$row" ]; then
  have=$(awk -v l="$l4t" '!/^#/ && NF >= 7 && $1 == l && $5 == "onnxruntime-gpu" { printf "%s%s %s (CUDA %s, %s)", sep, $5, $6, $3, $4; sep = "; " }' "$PINS")
  stay_on_cpu "no pinned onnxruntime-gpu for L4T $l4t with CUDA $cuda and Python $tag (pinned for $l4t: ${have:-none}). The app needs Python 3.11+ and NVIDIA publishes these for JetPack 6's Python 3.10 and for CUDA 12.9 with Python 3.12 only"
fi
set -- $row
index="$2" version="$6" sha="$7"
case "$sha" in
  *[!0-9a-f]*) echo "pin for onnxruntime-gpu $version has a malformed sha256 '$sha': refusing to install unpinned" >&2; exit 1 ;;
esac
[ "${#sha}" -eq 64 ] || { echo "pin for onnxruntime-gpu $version has no full sha256: refusing to install unpinned" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
printf 'onnxruntime-gpu==%s --hash=sha256:%s\n' "$version" "$sha" > "$work/requirements.txt"
say "downloading onnxruntime-gpu $version from $INDEX/$index (sha256 $sha)"
if ! "$PIP" download --quiet --no-deps --only-binary=:all: --require-hashes \
    --index-url "$INDEX/$index" -d "$work/wheels" -r "$work/requirements.txt" > "$work/pip.log" 2>&1; then
  tail -n 20 "$work/pip.log" | sed 's/^/    pip: /'
  if grep -q "DO NOT MATCH THE HASHES" "$work/pip.log"; then
    stay_on_cpu "the index served onnxruntime-gpu $version with another sha256 than the pinned one: refused (update gpu-wheels.txt from a trusted source)"
  fi
  stay_on_cpu "could not download onnxruntime-gpu $version from $INDEX/$index (network?): rerun $0 when it is reachable"
fi

# --- swap the packages; check; put the CPU one back if CUDA does not open a model ----------------
cpu_version=$("$PIP" show onnxruntime 2>/dev/null | sed -n 's/^Version: //p')
say "replacing onnxruntime ${cpu_version:-(none)} by onnxruntime-gpu $version"
put_cpu_back() {
  "$PIP" uninstall --quiet -y onnxruntime-gpu || true
  [ -z "$cpu_version" ] || "$PIP" install --quiet "onnxruntime==$cpu_version"
}
[ -z "$cpu_version" ] || "$PIP" uninstall --quiet -y onnxruntime
if ! "$PIP" install --quiet --no-deps --no-index --require-hashes --find-links "$work/wheels" \
    -r "$work/requirements.txt"; then
  put_cpu_back
  stay_on_cpu "pip could not install the downloaded onnxruntime-gpu $version; onnxruntime $cpu_version is back"
fi

"$PY" -m mongars_edge.inference.gpu_check > "$work/check" 2>&1 || true
fact() { sed -n "s/^$1=//p" "$work/check" | head -n 1; }
present=$(fact present)
opened=$(fact cuda_session)
say "providers present: ${present:-none}; a model asked for CUDA opened on: ${opened:-nothing}"
if [ "$opened" != "CUDAExecutionProvider" ]; then
  sed 's/^/    check: /' "$work/check"
  put_cpu_back
  stay_on_cpu "onnxruntime-gpu $version did not open a model on CUDA here; onnxruntime $cpu_version is back"
fi
case ",$present," in
  *,TensorrtExecutionProvider,*) say "TensorRT provider present: each model's engine is built on its first use (minutes) and cached under the data dir's trt-cache" ;;
  *) echo "    onnxruntime-gpu $version has no TensorRT provider: models run on CUDA" ;;
esac

# --- CTranslate2 (speech-to-text) ------------------------------------------------------------------
devices=$(fact ctranslate2_cuda_devices)
if [ -n "$devices" ]; then
  ct2=$(awk -v l="$l4t" -v c="$cuda" -v t="$tag" '!/^#/ && NF >= 7 && $1 == l && $3 == c && $4 == t && $5 == "ctranslate2" { print $6; exit }' "$PINS")
  if [ "$devices" = "0" ] || [ -z "${devices##error*}" ]; then
    if [ -z "$ct2" ]; then
      say "CTranslate2 (speech-to-text) stays on the CPU: no CUDA build of it is published for Jetson (PyPI's aarch64 wheels are CPU only)"
    else
      say "CTranslate2 sees no CUDA device ($devices): speech-to-text stays on the CPU"
    fi
  else
    say "CTranslate2 sees $devices CUDA device(s)"
  fi
fi
say "ONNX Runtime on the GPU: onnxruntime-gpu $version ($index); restart the service: systemctl restart mongars-edge"
