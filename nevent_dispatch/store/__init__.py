"""Storage: every SQL statement and the code that runs it (``sqlite/``)."""
