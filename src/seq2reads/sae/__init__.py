"""sae layer."""
