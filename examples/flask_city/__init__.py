"""The classic Flask city lookup, served four ways (see README.md)."""
