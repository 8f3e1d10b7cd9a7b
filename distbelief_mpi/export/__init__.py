"""`distbelief export`: a trained model (model.h5) as NumPy .npz, PyTorch (safetensors plus an
nn.Module file) or ONNX. Every format takes inputs in the dataset's raw units (the model's
x_scale is applied inside) and gives softmax probabilities, like `distbelief predict`.

PyTorch, safetensors, onnx and onnxruntime are optional (`pip install 'distbelief-mpi[export]'`):
each is imported only when its format is asked for (docs/model_use.md, "Export").
"""

from .run import FORMATS, default_output, export_model

__all__ = ["FORMATS", "default_output", "export_model"]
