"""The data plane: everything that touches tensors.

loader.py          a model file -> (config, LazyWeights): gguf_weights.py, hf_weights.py
lazy_weights.py    canonical names, the checks on them, tensors read when asked for
weight_rows.py     a matrix read a block of rows at a time (fp32 or the int8 codes)
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
