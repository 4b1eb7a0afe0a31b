"""Denoisers built from several denoisers (trajectory stitching); importing this package
registers the ``stitch`` config section."""
from jaxdiff.combine import tstitch  # noqa: F401  (registers config.stitch)
