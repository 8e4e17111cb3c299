"""Image operations: tiling, masks, noise, filters, blending, upscalers, face correction, output encoding."""
