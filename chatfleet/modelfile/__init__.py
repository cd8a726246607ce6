"""What a model file holds, read without torch: where it is, its GGUF metadata and tensors,
its tokenizer and chat template. The engine, the server, the gateway and the planner read
these; only model/ turns the tensors into torch weights."""
