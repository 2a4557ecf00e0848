"""Deployment runtimes as hardware targets: ONNX Runtime and OpenVINO (the ``runtimes`` extra).

:mod:`.base` (what a runtime implements, the images it is given), :mod:`.export` (to ONNX, and the agreement
check), :mod:`.ort` and :mod:`.ov` (the runtimes), :mod:`.measure` (how a runtime target is measured). The
targets themselves (``ort-cpu``, ``openvino-cpu``, ``ort-cuda``, ``tensorrt``) are registered by the
``kdbench_plugins.runtimes`` plugin. The runtime packages are imported only when a target is measured.
"""
from kdbench.measurement.runtimes.base import NotApplicable, Quantized, Runtime, RuntimeInputs

__all__ = ["NotApplicable", "Quantized", "Runtime", "RuntimeInputs"]
