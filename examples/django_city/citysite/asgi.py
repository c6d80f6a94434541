"""ASGI entry: ``uvicorn --app-dir examples/django_city citysite.asgi:application``."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "citysite.settings")
application = get_asgi_application()
