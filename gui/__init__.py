"""LoRA Kiln's Qt front end. It drives ``core`` and never the other way round."""
