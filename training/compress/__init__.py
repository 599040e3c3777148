"""Compression of the detector encoders: quantization, pruning and distillation, latency and memory
measurement, sensitivity analysis, the design-space search, and TensorRT engines."""
