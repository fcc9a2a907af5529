"""MesoScan's model side: MesoNet definitions, the model registry, training, export and prediction backends."""
