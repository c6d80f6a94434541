"""A test app for tether's Flask extension, and a launcher for it under gunicorn."""
