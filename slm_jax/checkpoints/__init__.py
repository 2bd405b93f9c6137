"""Checkpoint I/O: importers from Hugging Face safetensors and the orbax train-state manager."""
