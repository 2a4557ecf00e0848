"""``baseline``: the student trained alone with cross-entropy.

Every suite includes it: it is the reference each distiller is compared with
(``kdbench.core.config.REFERENCE_METHOD``). The objective itself is the
engine's :class:`~kdbench.engine.objectives.CrossEntropy`, the one teachers
train with.
"""
from __future__ import annotations

import kdbench
from kdbench.core.config import REFERENCE_METHOD
from kdbench.engine.objectives import CrossEntropy


@kdbench.hookimpl
def register_methods(register):
    register(kdbench.Method(REFERENCE_METHOD, CrossEntropy, summary="student trained alone (cross-entropy)"))
