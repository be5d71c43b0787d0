"""Communication (the documents, III: SketchML): compressed gradients on the wire, as DDP comm hooks."""
