"""Data producers: attach per-candidate facts (prefix match, predictions) before scheduling."""
