"""Helpers: targets, image utilities, reshape transforms."""
