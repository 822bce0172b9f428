"""The pipeline's stages, each a long-running trio task started by the supervisor.

Each stage module declares its :class:`~lakeferry.stagespec.StageSpec` as ``SPEC``;
:mod:`lakeferry.stages.catalog` lists them (``STAGES``: their names, in event order).
"""
