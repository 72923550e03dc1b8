"""Training for kws: data, DS-CNN models, int8 quantization, evaluation and export.

Needs the ``[train]`` extra (TensorFlow). May import ``kws``; ``kws`` never imports this.
"""
