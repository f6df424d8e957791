"""Async inference jobs: store, runners, result callbacks."""
