"""The control plane: plain Python over ints, importable without a GPU.

request.py           Request: one mutable object per sequence
block_pool.py        the fixed pool of KV blocks: free LRU list, prefix-hash table
kv_cache_manager.py  requests -> blocks: computed prefix, allocate_slots (None when short), free
scheduler.py         schedule() -> SchedulerOutput; update_from_output(); preemption
detokenizer.py       incremental detokenization and stop strings
llm_engine.py        LLMEngine: add_request / step; owns the ModelRunner
async_engine.py      AsyncEngine: the engine on one thread, streams to asyncio callers
engine_client.py     EngineClient: what the server needs from an engine, local or remote
step_trace.py        one JSON line per step: timing and shape (for the planner)
"""
