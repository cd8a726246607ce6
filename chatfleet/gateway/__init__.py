"""The product layer in front of an OpenAI-compatible upstream (a router or one replica).

gateway_app.py   the FastAPI app: the routers of routes/ over one Gateway
components.py    Gateway: every component the routes use, built once
routes/          one APIRouter per resource (/api/*, /v1/*, the web page at /)
auth.py          Bearer key -> the stored key; the CallerKey / AdminKey dependencies
keys.py          API key format and salted hashes; the plain key is shown once, never stored
store/           the repository: users, keys, conversations, messages, usage (SQLite, PostgreSQL)
limits/          rate-limit stores: GCRA over requests and tokens, concurrent-stream leases
limiter.py       per-request admission: reserve, settle (refund), release; x-ratelimit headers
prompt.py        history -> the messages sent upstream, trimmed from the oldest turn to fit
upstream.py      the httpx client to the upstream, its refusals, its context length
chat.py          one assistant reply: stream it to the client while recording it durably
openai_proxy.py  /v1/* passed through with the same keys, limits and usage accounting
schemas.py       request bodies of /api/* and the JSON of stored records
"""
