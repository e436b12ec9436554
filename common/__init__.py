"""Code both processes run: image decoding and the Prometheus metrics (docs/architecture.md)."""
