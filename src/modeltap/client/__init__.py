"""Talking to a running modeltap from outside it (uploading labels)."""
