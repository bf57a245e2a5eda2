"""ALBEF-style vision-language model with a BLIP-style captioning decoder: model, losses,
tokenizer, WebDataset data, trainer (single process or Ray Train), eval and inference."""
