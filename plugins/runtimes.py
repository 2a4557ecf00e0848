"""Deployment runtimes as measurement targets (the ``runtimes`` extra: onnx, onnxscript, onnxruntime,
openvino, nncf).

==============  ========  ===========================================  =========
name            device    runtime                                      precisions
==============  ========  ===========================================  =========
ort-cpu         cpu       ONNX Runtime, CPUExecutionProvider           fp32, int8
openvino-cpu    cpu       OpenVINO, CPU plugin                         fp32, int8
ort-cuda        cuda:0    ONNX Runtime, CUDAExecutionProvider          fp32
tensorrt        cuda:0    ONNX Runtime, TensorrtExecutionProvider      fp32
==============  ========  ===========================================  =========

The model is exported to ONNX and checked against PyTorch before it is timed
(:mod:`kdbench.measurement.runtimes.measure`). ``int8`` is kdbench's own int8
graph (a ``quant``/``qat`` stage) where it exports, else the runtime's own
post-training quantization of the float model (ONNX Runtime's
``quantize_static``, OpenVINO's NNCF), calibrated on the cell's training
images; the ``kdbench.measure.<target>.int8`` tag says which. Each target's
probe says why it is unavailable (a missing package names the extra to install;
the GPU targets need onnxruntime-gpu and a CUDA GPU).
"""
from __future__ import annotations

import kdbench
from kdbench.measurement.runtimes.ort import CUDA, TENSORRT, OnnxRuntime
from kdbench.measurement.runtimes.ov import OpenVINO


@kdbench.hookimpl
def register_hardware(register):
    H = kdbench.Hardware
    ort_cpu = OnnxRuntime(precisions=("fp32", "int8"))
    register(H("ort-cpu", "cpu", precisions=ort_cpu.precisions, runtime=ort_cpu, probe=ort_cpu.problem,
               summary="ONNX Runtime, CPU provider, all graph optimisations, all physical cores: fp32, and int8 "
                       "(kdbench's int8 graph exported, else ORT static QDQ quantization)"))
    ov_cpu = OpenVINO(precisions=("fp32", "int8"))
    register(H("openvino-cpu", "cpu", precisions=ov_cpu.precisions, runtime=ov_cpu, probe=ov_cpu.problem,
               summary="OpenVINO CPU plugin, latency hint, all physical cores: fp32, and int8 "
                       "(kdbench's int8 graph exported, else NNCF post-training quantization)"))
    ort_cuda = OnnxRuntime(provider=CUDA)
    register(H("ort-cuda", "cuda:0", runtime=ort_cuda, probe=ort_cuda.problem,
               summary="ONNX Runtime, CUDA provider on the first GPU: fp32 (needs onnxruntime-gpu)"))
    trt = OnnxRuntime(provider=TENSORRT)
    register(H("tensorrt", "cuda:0", runtime=trt, probe=trt.problem,
               summary="TensorRT through ONNX Runtime's TensorRT provider on the first GPU: fp32"))
