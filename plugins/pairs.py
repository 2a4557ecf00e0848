"""Teacher→student pairs of timm models.

The ``tiny*`` pairs use timm's test models: they train in seconds on a CPU
and serve the default suite and the tests. The others are the pairs papers
report on (ImageNet-scale; train them on a GPU).
"""
from __future__ import annotations

import kdbench

PAIRS = [
    ("tiny", "test_resnet", "test_efficientnet", "timm test models: ResNet (0.37M) → EfficientNet (0.10M)"),
    ("tiny-vit", "test_resnet", "test_vit", "timm test models: ResNet → ViT (CNN teacher, transformer student)"),
    ("tiny-convnext", "test_resnet", "test_convnext", "timm test models: ResNet → ConvNeXt"),
    ("resnet34-resnet18", "resnet34", "resnet18", "the standard ImageNet pair (CRD, DKD, ReviewKD tables)"),
    ("resnet34.tv-resnet18", "resnet34.tv_in1k", "resnet18",
     "the CRD/DKD ImageNet pair with its published teacher: torchvision's ResNet-34 weights (73.31% top-1)"),
    ("resnet50-mobilenetv3", "resnet50", "mobilenetv3_large_100", "heterogeneous ImageNet pair"),
    ("convnext_tiny-convnext_atto", "convnext_tiny", "convnext_atto", "ConvNeXt family"),
    ("deit_small-deit_tiny", "deit_small_patch16_224", "deit_tiny_patch16_224", "ViT family"),
]


@kdbench.hookimpl
def register_model_pairs(register):
    for name, teacher, student, summary in PAIRS:
        register(kdbench.ModelPair(name, teacher, student, summary=summary))
