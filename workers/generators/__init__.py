"""Training of the binary classifier and the two generators of adversarial_generators."""
