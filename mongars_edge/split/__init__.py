"""Splitting a model across boxes: llama.cpp's RPC, guarded, hosted and supervised."""
