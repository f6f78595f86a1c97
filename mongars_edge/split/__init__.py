"""A model split across boxes with llama.cpp's RPC backend: the guard on its wire, the worker."""
