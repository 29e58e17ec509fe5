"""Helpers for tfds.testing.DatasetBuilderTestCase on our builders."""


class TfrecordFiles:
  """Mixin: build TFRecord files in the TFDS builder test.

  TFDS's checks read through as_dataset(), which ArrayRecord (our builders'
  default, read by index by the trainer) does not support.
  """
  SKIP_TF1_GRAPH_MODE = True

  def _make_builder(self, config=None):
    return self.dataset_class(data_dir=self.tmp_dir, config=config,
                              version=self.VERSION, file_format="tfrecord")
