"""WSGI entry: ``gunicorn --chdir examples/django_city -k gthread --threads 16
citysite.wsgi:application``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "citysite.settings")
application = get_wsgi_application()

if os.environ.get("CITY_WARM") == "1":
    # Use the database before the server forks its workers (gunicorn --preload): each
    # worker's pool forgets the connection inherited from here and opens its own.
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    connection.close()
