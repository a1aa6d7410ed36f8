"""Deployment: one ``Predictor`` (a model loaded and compiled once, with its tokenizer, task
kind and input limits) read by ``obert.pipeline`` (transformers pipelines on the compiled model)
and ``obert serve`` (an HTTP server with dynamic batching). Nothing heavy is imported here."""
