"""What-if scenarios from the live state (issue 27, item 3): live state, runs, their store."""
