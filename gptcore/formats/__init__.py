"""Every file format a model is read from or written to: gptcore's model folder (model_folder), LoRA
adapters beside a pointer to their base (adapters), Hugging Face's GPT-2 (huggingface), the book's model.pth
(book), and a model from any of them (loading). A new export goes here.

Imports: the base, model, data.
"""
