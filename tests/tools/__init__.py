"""The tools of tools/ run end to end."""
