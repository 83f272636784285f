"""Outbound webhook endpoints and their deliveries (Standard Webhooks)."""
