"""Input pipelines: TFDS builders (input_pipeline.datasets) and tf.data pipelines."""
