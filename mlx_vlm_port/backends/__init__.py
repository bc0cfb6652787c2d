"""Speed work for one device, kept out of the model files: `load()` applies a
backend by swapping a loaded model's modules for subclasses with the same
parameters. The model files stay plain MLX (and `mx.compile`-safe)."""
