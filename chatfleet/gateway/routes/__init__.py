"""The gateway's routes, one APIRouter per resource; each takes its caller and the gateway's
components as dependencies (gateway/auth.py) and calls a service.

web_page.py       GET /, /static/*: the web chat
account.py        GET /api/me, /api/usage
conversations.py  /api/conversations/*: CRUD, messages and regenerate (SSE)
api_keys.py       /api/keys: list, create (admin), revoke
openai_api.py     /v1/*: the OpenAI API with the same keys, limits and usage accounting
"""
