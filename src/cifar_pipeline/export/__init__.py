"""The export stage: the trained model as SavedModel, LiteRT (float16, int8) and ONNX files, each
scored against the original."""
