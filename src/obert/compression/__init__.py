"""Compression beyond pruning: layer dropping (``layers``), the INT8 scheme (``quant``) and the
INT8 plan that QAT, ``compile`` and the ONNX export read (``plan``)."""
