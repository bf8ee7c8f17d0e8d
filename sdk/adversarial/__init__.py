"""adversarial stage."""
