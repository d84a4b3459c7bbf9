"""The diffusion lab: views of how an image came about (the denoising film, what each word
painted, CLIP's reading, the forward noising process) and experiment grids.

`spec` is the plain contract (no torch); the other modules run in the worker process on the
engine's own pipeline and are imported only there.
"""
