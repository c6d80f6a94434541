"""The city lookup (read), a visit counter bumped inside ``atomic()`` (write), the pool's
stats, and an async variant of the lookup (Django runs its ORM call in a thread)."""

from __future__ import annotations

import os
import time

from django.db import OperationalError, connection, transaction
from django.db.models import F
from django.http import HttpRequest, HttpResponse, JsonResponse

from .models import City, Visit


def city(request: HttpRequest) -> HttpResponse:
    row = City.objects.filter(name=request.GET.get("name", "")).values_list("id").first()
    if row is None:
        return JsonResponse({"error": "no such city"}, status=404)
    return JsonResponse({"id": row[0]})


async def acity(request: HttpRequest) -> HttpResponse:
    row = await City.objects.filter(name=request.GET.get("name", "")).values_list("id").afirst()
    if row is None:
        return JsonResponse({"error": "no such city"}, status=404)
    return JsonResponse({"id": row[0]})


def visit(request: HttpRequest) -> HttpResponse:
    """One more visit to a city, in a transaction; ``pause`` (seconds) holds the transaction
    open between its statements (the tests kill sessions meanwhile)."""
    name = request.GET.get("name", "")
    pause = float(request.GET.get("pause", "0"))
    try:
        with transaction.atomic():
            target = City.objects.select_for_update().get(name=name)
            Visit.objects.get_or_create(city=target)
            if pause:
                time.sleep(pause)
            Visit.objects.filter(city=target).update(n=F("n") + 1)
            n = Visit.objects.get(city=target).n
    except OperationalError as exc:
        # The connection was lost inside the transaction: nothing of it was committed
        # (tether's TransactionLost, as Django's OperationalError, is the cause).
        cause = exc.__cause__
        body = {"error": type(exc).__name__, "cause": type(cause).__name__, "detail": str(exc)}
        return JsonResponse(body, status=503)
    return JsonResponse({"n": n})


def stats(request: HttpRequest) -> HttpResponse:
    """The pool's counters (tether's backend only) and this worker's pid."""
    pool = getattr(connection, "pool", None)
    data = pool.stats().as_dict() if pool is not None else {}
    return JsonResponse({"pid": os.getpid(), "pool": data})


def health(request: HttpRequest) -> HttpResponse:
    return JsonResponse({"ok": True})
