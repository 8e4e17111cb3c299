"""Pure image computation: stages, the chain executor, ONNX Runtime sessions, models.

Nothing here imports from ``service`` or touches a database or the network. Modules that the
api imports (``pipelines.stages.catalogue``, ``pipelines.models.registry``, ``pipelines.params``)
import neither torch nor onnxruntime at module level, so api containers stay small.
"""
