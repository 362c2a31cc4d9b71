"""The training itself, as the pod program and the local backend's process run it.

Data processing (instructlab-training's tokenizer step), the ``main_ds`` command line on CUDA,
the CPU loop, how several nodes wait for node 0's data, the progress lines, and the tiny test
model's builder. Only the standard library, torch, transformers and instructlab-training (with
their dependencies) are imported here: the training image has nothing else.
"""
