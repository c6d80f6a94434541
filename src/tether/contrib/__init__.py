"""Integrations with other libraries, each behind its own extra (tether[flask], tether[prometheus])."""
