"""All SQL lives here; repositories flush, never commit."""
