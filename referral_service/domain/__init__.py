"""The business: plain functions that take and return plain values, and raise domain errors."""
