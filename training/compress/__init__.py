"""Compression of the detector encoders: quantization, latency measurement (pruning, distillation,
TensorRT engines and the design-space search build on these)."""
