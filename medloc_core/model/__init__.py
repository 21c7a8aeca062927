"""The policy and its parts: loading a Qwen2.5-VL (Hub id or folder, with adapters), the offline stand-in and its
tokenizer, the MLAE adapter, CPU kernels, and the one generate loop used for predictions."""
