"""Import paths that code written for onnxruntime uses (``onnxruntime.capi...``)."""
