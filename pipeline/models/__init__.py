"""Plain torch networks (no Lightning): usable and testable outside the trainer."""
