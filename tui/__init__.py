"""serlive.tui."""
