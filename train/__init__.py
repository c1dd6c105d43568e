"""serlive.train."""
