"""Easel's Stable Diffusion engine: requests, the pipeline, the worker process and a CLI.

It knows torch and diffusers and never imports discord."""
