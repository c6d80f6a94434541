"""Settings of the city example, from the environment:

- ``DATABASE_URL``: ``mysql://app:secret@127.0.0.1:3306/app`` (the password may be
  percent-encoded);
- ``CITY_ENGINE``: ``tether`` (the default: ``tether.contrib.django``), ``django`` (Django's own
  MySQL backend) or ``dj_db_conn_pool`` (django-db-connection-pool), for the benchmark;
- ``CITY_DRIVER``: ``mysqlclient`` (the default) or ``pymysql`` (``install_as_MySQLdb``);
- ``CITY_CONN_MAX_AGE``: seconds, ``none`` for unlimited (default 0: a connection per request,
  which with the pool is a check-out and a give-back);
- ``CITY_HEALTH_CHECKS``: ``1`` for ``CONN_HEALTH_CHECKS``;
- ``CITY_POOL_SIZE``: the pool's bound (default 16); ``CITY_POOL_TIMEOUT``: its check-out
  timeout (default 10).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

BASE_DIR = Path(__file__).resolve().parent.parent

if os.environ.get("CITY_DRIVER", "mysqlclient") == "pymysql":
    import pymysql

    pymysql.install_as_MySQLdb()

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "city-example-not-a-secret")
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "cities",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "citysite.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
WSGI_APPLICATION = "citysite.wsgi.application"
ASGI_APPLICATION = "citysite.asgi.application"
USE_TZ = True
STATIC_URL = "static/"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

ENGINES = {
    "tether": "tether.contrib.django",
    "django": "django.db.backends.mysql",
    "dj_db_conn_pool": "dj_db_conn_pool.backends.mysql",
}


def _database() -> dict[str, Any]:
    url = urlsplit(os.environ.get("DATABASE_URL", "mysql://app:secret@127.0.0.1:3306/app"))
    engine = os.environ.get("CITY_ENGINE", "tether")
    age = os.environ.get("CITY_CONN_MAX_AGE", "0")
    size = int(os.environ.get("CITY_POOL_SIZE", "16"))
    db: dict[str, Any] = {
        "ENGINE": ENGINES[engine],
        "NAME": url.path.lstrip("/"),
        "USER": unquote(url.username or ""),
        "PASSWORD": unquote(url.password or ""),
        "HOST": url.hostname or "127.0.0.1",
        "PORT": url.port or 3306,
        "CONN_MAX_AGE": None if age.lower() == "none" else int(age),
        "CONN_HEALTH_CHECKS": os.environ.get("CITY_HEALTH_CHECKS") == "1",
        "OPTIONS": {},
    }
    if engine == "tether":
        timeout = float(os.environ.get("CITY_POOL_TIMEOUT", "10"))
        db["OPTIONS"]["POOL"] = {"max_size": size, "timeout": timeout}
    elif engine == "dj_db_conn_pool":
        db["POOL_OPTIONS"] = {"POOL_SIZE": size, "MAX_OVERFLOW": 0, "RECYCLE": 3600}
    return db


DATABASES = {"default": _database()}
