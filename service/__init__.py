"""The Whitebox gateway: FastAPI, validation, auth, limits, backpressure. Never imports torch."""
