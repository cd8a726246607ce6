"""Write a copy of a Llama GGUF keeping only its first N layers (same tokenizer, same format).

The device machine's transfer limit (64 MiB) is below the default model's 98 MB; a 6-layer copy
exercises every code path of the engine on CUDA. Usage: truncate_gguf.py OUT.gguf [N]
"""

from __future__ import annotations

import sys

from gguf import GGUFReader, GGUFValueType, GGUFWriter

from chatfleet.modelfile.paths import default_model_path


def main(out_path: str, num_layers: int) -> None:
    reader = GGUFReader(default_model_path())
    writer = GGUFWriter(out_path, "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":
            continue
        value = num_layers if key == "llama.block_count" else field.contents()
        vtype = field.types[0]
        sub = field.types[-1] if vtype == GGUFValueType.ARRAY else None
        writer.add_key_value(key, value, vtype, sub_type=sub)
    for t in reader.tensors:
        if t.name.startswith("blk.") and int(t.name.split(".")[1]) >= num_layers:
            continue
        writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 6)
