"""Training MesoNet on labelled face crops and registering the result (or an ensemble) as a named model.

`mesoscan train` (commands.py) turns its options into a `TrainConfig` (config.py: the one place a setting is
declared, with its option, help and card wording) and calls `run.train`: the crops are read and split by cluster
(data.py), fed by a seeded `tf.data` pipeline (pipeline.py) to one Keras fit that checkpoints every epoch
(loop.py), and the best epoch's weights get a calibration, threshold and band fitted on the validation crops
(verdict.py) before they are registered with their JSON and model card (registration.py). ensemble.py registers
the mean of trained models; recalibrate.py fits a registered model's verdict fields again (`mesoscan calibrate`).
The model and the loop are plain Keras 3; TensorFlow is used only for the input pipeline.
"""
