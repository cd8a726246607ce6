"""The HTTP layer every front (server, router, gateway) is built on; no front imports another.

http_errors.py     typed HTTP errors and the one mapping to OpenAI's error JSON
body.py            request bodies: size limit, UTF-8, JSON depth, pydantic validation -> 400/413
sse.py             server-sent events: writing (with keep-alive comments) and reading
handlers.py        the FastAPI app every front starts from: error handlers, disconnect watch
streaming.py       a streamed response that closes its body and runs its clean-up however it ends
ops_routes.py      /health, /ready and /metrics from three callables
http_client.py     the httpx client a proxy uses to reach its upstreams
uvicorn_server.py  uvicorn with a drain step on the first signal and logging set up once
"""
