"""tether.Pool through the Flask extension: a bounded pool shared by the server's threads."""

import os

from flask import Flask, jsonify, request
from flask.typing import ResponseReturnValue

from tether.contrib.flask import Tether

app = Flask(__name__)
app.config["TETHER_DSN"] = os.environ["DATABASE_URL"]
db = Tether(app, max_size=16)  # never more server connections than this per process


@app.get("/")
def city() -> ResponseReturnValue:
    cur = db.connection().cursor()  # checked out now, returned when the request ends
    cur.execute("SELECT id FROM city WHERE name = %s", (request.args.get("city", ""),))
    row = cur.fetchone()
    if row is None:
        return jsonify(error="unknown city"), 404
    return jsonify(id=row[0])
