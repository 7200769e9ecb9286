"""Upstream provider backends: kie.ai, Black Forest Labs, Ideogram, Google."""
