"""tinyforge: self-improvement of open language models at code and math, measured honestly.

The package reads as the pipeline: data -> generate -> execute (sandbox) -> mine -> train -> evaluate -> report.
"""

__version__ = "0.1.0"
