"""toolace-r: ToolACE-R (model-aware iterative training + adaptive self-refinement for tool calling) on Ray."""
__version__ = "0.1.0"
