"""Models: the embedded tiny model (tokenizer, warm-up) and offline resolution of pretrained ones."""
