"""WSGI entry: ``gunicorn --chdir examples/django_city -k gthread --threads 16
citysite.wsgi:application``."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "citysite.settings")
application = get_wsgi_application()
