"""The train stage's library: the network, its recipe, the input pipeline, the training run,
checkpoints, devices and tf.distribute (and the non-chief worker's command)."""
