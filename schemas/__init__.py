"""Whitebox contracts: HTTP bodies, the job message that crosses Redis, the
model-registry config, the method catalog and the settings. No torch here."""
