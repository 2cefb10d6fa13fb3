"""The command line end to end: real subprocess runs on small data, and bad input."""
