"""The product layer in front of an OpenAI-compatible upstream (a router or one replica).

config.py       frozen settings, one dataclass per component
errors.py       typed HTTP errors (401/403/404/409/429/502) on top of server/errors.py
keys.py         API key format and salted hashes; the plain key is shown once, never stored
auth.py         Bearer key -> Principal (user, key, limits)
store/          the repository: users, keys, conversations, messages, usage (SQLite, PostgreSQL)
limits/         rate-limit stores: GCRA over requests and tokens, concurrent-stream leases
limiter.py      per-request admission: reserve, settle (refund), release; x-ratelimit headers
prompt.py       history -> the messages sent upstream, trimmed from the oldest turn to fit
upstream.py     the httpx client to the upstream, SSE parsing, its context length
chat.py         one assistant reply: stream it to the client while recording it durably
proxy.py        /v1/* passed through with the same keys, limits and usage accounting
app.py          the FastAPI app: /api/*, /v1/*, the web page at /
"""
