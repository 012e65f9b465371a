"""Small generic helpers: seeding, devices, atomic file writes."""
