"""The data plane: everything that touches tensors.

loader.py          GGUF / safetensors -> weights under canonical names
models/llama.py    the decoder
linear.py          weight formats: fp32 / bf16 through the platform GEMM, int8 (C++ kernel)
attention/         paged attention backends: reference, sdpa (also CUDA), cpu (C++ kernel)
fused_decode.py    a decode-only step's layers in one C++ call
kernels.py         building and loading the C++ kernels (csrc/)
forward_context.py one step's positions, slots and block tables
rope.py            rotary position embeddings
sampler.py         penalties, temperature, top-k/p, min-p, seeded generators, logprobs
runner.py          ModelRunner.execute(SchedulerOutput) -> ModelRunnerOutput
export.py          the model as a HF safetensors directory
"""
