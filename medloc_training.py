"""Makes ``zenml pipeline run medloc_training`` resolve to the pipeline object.

``zenml pipeline run`` takes an importable source path; a bare module name would resolve to this module, so the
module replaces itself in ``sys.modules`` with the pipeline. The pipeline and its steps keep their real module
paths (``pipelines.medloc_training``), so remote orchestrators do not depend on this shim.
"""

import sys

from pipelines.medloc_training import install_one_line_errors
from pipelines.medloc_training import medloc_training as _pipeline

install_one_line_errors()  # a config error ends the CLI run in one line, not a traceback from inside ZenML
sys.modules[__name__] = _pipeline
