"""serlive.stream."""
