"""Text models: GPT-2 causal language models exported to ONNX with past key/values, their sampling
loop (txt2txt and the ``text-prompt`` stage), and the image safety classifier of ``edit-safety``."""
