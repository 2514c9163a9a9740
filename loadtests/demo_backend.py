"""A small HTTP workload for load tests: an items API on aiohttp.

    python -m loadtests.demo_backend --host 127.0.0.2 --port 8080

``GET /api/items`` (a list), ``GET|PUT /api/items/{id}``, ``POST /api/items`` (201),
``/healthz``; anything else 404. Each answer names the instance (``--name``), so a load test
can see how the proxy balanced it.
"""

from __future__ import annotations

import argparse
import json

from aiohttp import web


def app(name: str) -> web.Application:
    items = [{"id": i, "name": f"item-{i}"} for i in range(1, 21)]

    async def list_items(request: web.Request) -> web.Response:
        return web.json_response({"instance": name, "items": items})

    async def get_item(request: web.Request) -> web.Response:
        return web.json_response({"instance": name, "id": int(request.match_info["id"])})

    async def write_item(request: web.Request) -> web.Response:
        body = await request.json()
        status = 201 if request.method == "POST" else 200
        return web.json_response({"instance": name, "stored": body}, status=status)

    async def health(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    application = web.Application()
    application.router.add_get("/api/items", list_items)
    application.router.add_post("/api/items", write_item)
    application.router.add_get(r"/api/items/{id:\d+}", get_item)
    application.router.add_put(r"/api/items/{id:\d+}", write_item)
    application.router.add_route("*", "/healthz", health)
    return application


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.2")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--name", default="demo-0")
    args = parser.parse_args(argv)
    print(json.dumps({"listening": f"{args.host}:{args.port}"}), flush=True)
    web.run_app(app(args.name), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
