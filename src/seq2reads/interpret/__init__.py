"""interpret layer."""
