"""Running parts: the sync supervisor and its actors (built in a later issue)."""
