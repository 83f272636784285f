"""Emails to referrers: one row per event and recipient, so that none is sent twice."""
