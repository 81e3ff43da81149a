"""Workstation side: tf_keras learners, episodic training, distribution, evaluation in Keras, open-set calibration, recipes.

Everything here imports TensorFlow through `edgemeta.train.backend`; nothing on the board imports it.
"""
