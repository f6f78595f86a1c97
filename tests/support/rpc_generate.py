"""A child process that generates greedily with llama.cpp, every layer on an RPC server or all on
this CPU, and prints the token ids as JSON (llama.cpp's RPC client aborts its process when a
connection breaks: never run this inside a test process).

    python -m tests.support.rpc_generate MODEL.gguf N_TOKENS [HOST:PORT]
"""

from __future__ import annotations

import ctypes
import json
import sys
from pathlib import Path

import llama_cpp as lc

PROMPT = b"The three primary colours are"


def _rpc_device(endpoint: str) -> int:
    lib = Path(lc.__file__).parent / "lib"
    rpc = ctypes.CDLL(str(lib / "libggml-rpc.so"))
    ggml = ctypes.CDLL(str(lib / "libggml.so"))
    rpc.ggml_backend_rpc_add_server.restype = ctypes.c_void_p
    rpc.ggml_backend_rpc_add_server.argtypes = [ctypes.c_char_p]
    ggml.ggml_backend_reg_dev_get.restype = ctypes.c_void_p
    ggml.ggml_backend_reg_dev_get.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    reg = rpc.ggml_backend_rpc_add_server(endpoint.encode())
    if not reg:
        raise SystemExit(f"no RPC server at {endpoint}")
    device = ggml.ggml_backend_reg_dev_get(reg, 0)
    if not device:
        raise SystemExit(f"the RPC server at {endpoint} has no device")
    return int(device)


def generate(model_path: str, n: int, endpoint: str | None) -> list[int]:
    lc.llama_backend_init()
    params = lc.llama_model_default_params()
    devices = None
    if endpoint:
        devices = (ctypes.c_void_p * 2)(_rpc_device(endpoint), None)
        params.devices = ctypes.cast(devices, ctypes.c_void_p).value
        params.n_gpu_layers = 999
    else:
        params.n_gpu_layers = 0
    model = lc.llama_model_load_from_file(model_path.encode(), params)
    if not model:
        raise SystemExit("the model did not load")
    cparams = lc.llama_context_default_params()
    cparams.n_ctx = 256
    cparams.n_batch = 256
    cparams.n_threads = 1
    cparams.n_threads_batch = 1
    ctx = lc.llama_init_from_model(model, cparams)
    vocab = lc.llama_model_get_vocab(model)
    tokens = (lc.llama_token * 64)()
    count = lc.llama_tokenize(vocab, PROMPT, len(PROMPT), tokens, 64, True, False)
    sampler = lc.llama_sampler_init_greedy()
    out: list[int] = []
    batch = lc.llama_batch_get_one(tokens, count)
    for _ in range(n):
        if lc.llama_decode(ctx, batch) != 0:
            raise SystemExit("decode failed")
        token = lc.llama_sampler_sample(sampler, ctx, -1)
        if lc.llama_vocab_is_eog(vocab, token):
            break
        out.append(int(token))
        one = (lc.llama_token * 1)(token)
        batch = lc.llama_batch_get_one(one, 1)
    lc.llama_sampler_free(sampler)
    lc.llama_free(ctx)
    lc.llama_model_free(model)
    del devices
    return out


if __name__ == "__main__":
    endpoint = sys.argv[3] if len(sys.argv) > 3 else None
    print(json.dumps(generate(sys.argv[1], int(sys.argv[2]), endpoint)))
