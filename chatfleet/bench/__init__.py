"""`chatfleet bench`: a load generator for any OpenAI-compatible server, and its reports.

datasets.py     ShareGPT and synthetic prompts
workload.py     sessions of turns to send (single-turn, shared-prefix, multi-turn)
client.py       a streaming chat client that times every chunk
load_runner.py  concurrency / request-rate control over the client
record.py       one request's timings; result.py the run's JSON
summary.py      TTFT / TPOT / ITL / E2E statistics, goodput against SLOs
plot.py         latency CDFs and throughput plots
agreement.py    greedy agreement of two engines on chat prompts, the gate of a faster numeric path
"""
