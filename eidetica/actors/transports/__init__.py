"""Transports: carry request bytes to a peer and its answer back, chosen by scheme."""
