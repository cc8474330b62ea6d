"""Business rules; they flush, never commit."""
