"""The OpenAI-compatible server over one EngineClient (a local engine, or Ray replicas).

api_server.py           the app: thin routes, API key, admission (503 past the queue), drain
serving_base.py         what chat and completions share: engine streams -> JSON or SSE chunks
serving_chat.py         /v1/chat/completions
serving_completion.py   /v1/completions
protocol.py             OpenAI request schemas -> SamplingParams
server_metrics.py       Prometheus metrics under vLLM's names
launch.py               run the server over a local engine until a signal or the engine's death
"""
