"""The published PyTorch weights in and out (reference layouts, .pt / .safetensors)."""
