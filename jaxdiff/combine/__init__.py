"""Denoisers built from several denoisers (trajectory stitching)."""
