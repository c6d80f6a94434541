"""The city lookup as a FastAPI app on tether.AsyncPool: the pool opens and closes with the
application's lifespan, and a dependency hands each request a connection that goes back when
the request ends (also when the handler raises, or the client goes away and the request is
cancelled)."""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse

import tether


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    # One pool per process, bound to the server's event loop; closed at shutdown.
    async with tether.AsyncPool(
        os.environ["DATABASE_URL"],
        driver=os.environ.get("TETHER_DRIVER", "asyncmy"),
        max_size=16,
    ) as pool:
        app.state.pool = pool
        yield


app = FastAPI(lifespan=lifespan)


async def connection(request: Request) -> AsyncIterator[tether.AsyncConnection]:
    """A connection for the request, given back when it ends."""
    async with request.app.state.pool.connection() as conn:
        yield conn


Connection = Annotated[tether.AsyncConnection, Depends(connection)]


@app.get("/", response_model=None)
async def city(conn: Connection, city: str = "") -> Any:
    async with conn.cursor() as cur:
        await cur.execute("SELECT id FROM city WHERE name = %s", (city,))
        row = await cur.fetchone()
    if row is None:
        return JSONResponse({"error": "unknown city"}, status_code=404)
    return {"id": row[0]}


@app.post("/visit", response_model=None)
async def visit(request: Request, city: str = "") -> Any:
    """A small write transaction, rerun whole where that is safe (a connection lost before
    COMMIT was sent, a deadlock); a COMMIT whose reply was lost is reported, not rerun."""
    pool: tether.AsyncPool = request.app.state.pool
    visit_id = uuid.uuid4().hex

    async def record(conn: tether.AsyncConnection) -> int:
        async with conn.cursor() as cur:
            await cur.execute("INSERT INTO visit (id, city) VALUES (%s, %s)", (visit_id, city))
            await cur.execute("SELECT COUNT(*) FROM visit WHERE city = %s", (city,))
            row = await cur.fetchone()
        return int(row[0])

    try:
        count = await pool.run_transaction(record)
    except tether.OutcomeUnknown:
        return JSONResponse({"error": "outcome unknown", "id": visit_id}, status_code=503)
    return {"visits": count, "id": visit_id}


@app.get("/stats")
async def stats(request: Request) -> dict[str, Any]:
    return request.app.state.pool.stats().as_dict()  # type: ignore[no-any-return]
