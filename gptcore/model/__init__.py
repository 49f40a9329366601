"""The GPT-2 model and what runs it: the module (gpt: transformer, KV cache), its tokenizer, LoRA layers,
the runtime it runs on (device, threads, precision), decoding (sampling) and the weights it decodes with
(inference: fp32, bf16, int8).

Imports: the base.
"""
