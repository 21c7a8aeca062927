"""The MLflow model registry side of MedLoc: registering versions (``versions``), the promotion gate's pure rules
(``gate``) and moving ``champion`` under a lock (``promote``), and the served pyfunc model (``serving``,
``served_model``)."""
