"""Whitebox worker: model registry and loading, the explainer library, rendering, the queue consumer."""
