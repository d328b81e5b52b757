"""The ops center's agent: runs its host's backups there, for the center (issue 15)."""
