"""The registered ``medloc-grounder`` model, for MLflow's models-from-code logging.

``registry.versions.log_and_register`` logs this file (not a pickled object) as the pyfunc's model code; MLflow runs it
when the model is loaded, with this package on ``sys.path`` from the model's ``code_paths``. Settings
(answer style, max new tokens) come from the logged ``model_config``.
"""

import mlflow

from medloc_core.registry.serving import MedLocGrounderModel

mlflow.models.set_model(MedLocGrounderModel())
